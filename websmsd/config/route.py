"""[route]: which interface carries a message from the PBX when the dialplan names none.

    [route]
    prefix  [nordic] = +46, +47, 0046   ; destinations that start with these...
    via     [nordic] = sim1, sim2       ; ...go through sim1; sim2 takes what sim1 fails
                                        ; for good, or everything while sim1 is down
    prefix  [us]     = +1
    via     [us]     = tw
    default          = tw               ; everything else (else: the first [websms] one)
    replies          = yes              ; a reply leaves through the interface that owns
                                        ; the sender's number (the DID or SIM it came in on)

Rules are named like interfaces (`[index]`); the longest matching prefix wins.  Every
interface a rule names must exist in a channel section; WEBSMS_INDEX (the dialplan, the
`websms` command, the API's `interface`) overrides all of this.  The policy itself is
websmsd.routing (pure).
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Tuple

from websmsd.config.ini import IniSection
from websmsd.config.reader import _Context, _Key, _keys, _read_section, _Setting
from websmsd.config.values import _boolean, _single_line
from websmsd.record import frozen

_NOT_INDEXED = "cannot be indexed: it is one setting for all messages"
_PREFIX = re.compile(r"\+?[0-9]{1,15}")


@frozen
class RouteRule:
    name: str
    prefixes: Tuple[str, ...]
    via: Tuple[str, ...]  # interface names, in order


@frozen
class RouteSettings:
    rules: Tuple[RouteRule, ...] = ()
    default: Tuple[str, ...] = ()  # interface names; () = the first [websms] interface
    replies: bool = True


def _names(text: str, note) -> Tuple[str, ...]:
    names = tuple(n.strip() for n in _single_line(text).split(",") if n.strip())
    if not names:
        raise ValueError("names no interface")
    return names


def _prefixes(text: str, note) -> Tuple[str, ...]:
    prefixes = tuple(p.strip() for p in _single_line(text).split(",") if p.strip())
    if not prefixes:
        raise ValueError("names no prefix")
    for prefix in prefixes:
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"{prefix!r} is not a number prefix (digits, with an optional +)")
    return prefixes


KEYS = _keys(
    _Key("prefix", _prefixes),
    _Key("via", _names),
    _Key("default", _names, (), _NOT_INDEXED),
    _Key("replies", _boolean, (), _NOT_INDEXED, reads_booleans=True),
)


def read(section: Optional[IniSection], context: _Context,
         interfaces: Mapping[str, object]) -> RouteSettings:
    """`interfaces`: every interface that can carry a message, by name."""
    if section is None:
        return RouteSettings()
    settings = _read_section(section, context, KEYS)
    _check_names(settings.get("via"), interfaces, context)
    _check_names(settings.get("default"), interfaces, context)
    prefix, via = settings.get("prefix"), settings.get("via")
    for name in ("prefix", "via"):
        setting = settings.get(name)
        if setting is not None and setting.plain is not None:
            raise context.error(setting.plain.line, setting.plain.label,
                                f"{name} belongs to a named rule: write {name} [NAME] = ...")
    rules = []
    prefix_rules = (prefix.indexed or {}) if prefix else {}
    via_rules = (via.indexed or {}) if via else {}
    for name in list(prefix_rules) + [n for n in via_rules if n not in prefix_rules]:
        if name not in via_rules:
            read = prefix_rules[name]
            raise context.error(read.line, read.label, f"rule {name!r} has no via [{name}]")
        if name not in prefix_rules:
            read = via_rules[name]
            raise context.error(read.line, read.label, f"rule {name!r} has no prefix [{name}]")
        rules.append(RouteRule(name, prefix_rules[name].value, via_rules[name].value))
    seen = {}
    for rule in rules:
        for p in rule.prefixes:
            if p in seen:
                read = prefix_rules[rule.name]
                raise context.error(read.line, read.label,
                                    f"prefix {p} is also in rule {seen[p]!r}: which one?")
            seen[p] = rule.name
    default = settings["default"].plain.value if "default" in settings else ()
    replies = settings["replies"].plain.value if "replies" in settings else True
    return RouteSettings(tuple(rules), default, replies)


def _check_names(setting: Optional[_Setting], interfaces: Mapping[str, object],
                 context: _Context) -> None:
    if setting is None:
        return
    for read in setting.reads():
        for name in read.value:
            if name not in interfaces:
                known = ", ".join(repr(n) for n in interfaces) or "none"
                raise context.error(read.line, read.label,
                                    f"no interface named {name!r} (interfaces: {known})")
