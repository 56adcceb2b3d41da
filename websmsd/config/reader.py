"""From ini keys to typed values: the machinery every section module uses.

A section module declares its keys (`_Key`: name, reader, older names, whether it can
take an [index]); `_read_section` reads and checks them with file:line errors; the
interfaces of a section are the [index] names its keys use; a preset fills in what the
file does not say.  Names here are private to the config package.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from websmsd.config.ini import ConfigError, IniSection, IniValue, _locate
from websmsd.config.values import Reader
from websmsd.itsp import presets
from websmsd.record import frozen


# ---------------------------------------------------------------------------------------
# The keys of each section.  The name is that of the settings field; older names are
# read as aliases (the current PHP ignores them, leaving the defaults).


@frozen
class _Key:
    name: str
    read: Reader
    old_names: Tuple[str, ...] = ()
    # Why the key cannot take an [index] (None: it can).
    not_indexable: Optional[str] = None
    # The reader gives what unquoted yes/no/none became ("1"/"") a meaning of its own, so
    # the general notice about PHP booleans would only confuse.
    reads_booleans: bool = False


def _keys(*keys: _Key) -> Dict[str, _Key]:
    return {key.name: key for key in keys}


# ---------------------------------------------------------------------------------------
# From ini keys to settings.


@frozen
class _Read:
    """One value as read: typed, and where it came from."""

    value: Any
    line: int
    label: str  # the key as written: "url_host", "host" or "url_host[api-1]"


@dataclass
class _Setting:
    """One key of a section as read: a plain value, or one value per index."""

    key: _Key
    plain: Optional[_Read] = None
    indexed: Optional[Dict[str, _Read]] = None  # in PHP array order
    index_lines: Dict[str, int] = field(default_factory=dict)  # where each index began

    def for_interface(self, name: str) -> Optional[_Read]:
        """The value interface `name` gets; None: the key's default.  A plain value
        applies to every interface; an indexed key lacking `name` gives the default
        (not another index's value), and so it does to the unnamed default interface."""
        if self.plain is not None:
            return self.plain
        return (self.indexed or {}).get(name)

    def reads(self) -> List[_Read]:
        return [self.plain] if self.plain is not None else list((self.indexed or {}).values())


class _Context:
    """Where errors and notices go while one file is read."""

    def __init__(self, path: str, warnings: List[str]):
        self.path = path
        self.warnings = warnings

    def error(self, line: Optional[int], key: Optional[str], message: str) -> ConfigError:
        return ConfigError(self.path, line, key, message)

    def warn(self, line: Optional[int], key: Optional[str], message: str) -> None:
        self.warnings.append(_locate(self.path, line, key, message))


def _is_secret(name: str) -> bool:
    return any(word in name.lower() for word in ("secret", "passw", "token"))


def _convert(key: _Key, label: str, value: IniValue, context: _Context) -> _Read:
    def note(message: str) -> None:
        context.warn(value.line, label, message)

    if value.boolean_word is not None and not key.reads_booleans:
        # Never repeat the word of a secret, not even in a notice.
        word = f"unquoted {value.boolean_word}"
        if _is_secret(key.name):
            word = "an unquoted boolean word"
        note(
            f'{word} reads as "{value.text}" (a PHP ini boolean);'
            " put it in double quotes to keep the word"
        )
    try:
        typed = key.read(value.text, note)
    except ValueError as exc:
        raise context.error(value.line, label, str(exc)) from None
    return _Read(typed, value.line, label)


def _read_section(section: IniSection, context: _Context, known: Mapping[str, "_Key"],
                  ignored: Optional[Mapping[str, str]] = None) -> Dict[str, _Setting]:
    """The keys of one section, by settings name, read and checked one by one.

    `known`: the section's keys; `ignored`: older keys that never did anything, read and
    mentioned (key -> notice)."""
    ignored = ignored or {}
    by_written_name = {name: key for key in known.values() for name in (key.name, *key.old_names)}
    settings: Dict[str, _Setting] = {}
    for ini_key in section.keys.values():
        written = ini_key.name
        if written in ignored:
            context.warn(ini_key.line, written, ignored[written])
            continue
        key = by_written_name.get(written)
        if key is None:
            message = _unknown_key(section.name, written, by_written_name)
            raise context.error(ini_key.line, written, message)
        if key.name in settings:
            other = settings[key.name].reads()[0]
            raise context.error(
                ini_key.line, written,
                f"sets {key.name}, already set by {other.label} at line {other.line};"
                f" keep one, named {key.name}",
            )
        if written != key.name:
            context.warn(ini_key.line, written, f"older name of {key.name}; read as {key.name}")
        setting = settings[key.name] = _Setting(key)
        if ini_key.plain is not None:
            setting.plain = _convert(key, written, ini_key.plain, context)
            continue
        if key.not_indexable:
            label = f"{written}[{next(iter(ini_key.indexed))}]"
            raise context.error(ini_key.line, label, key.not_indexable)
        setting.indexed = {
            index: _convert(key, f"{written}[{index}]", value, context)
            for index, value in ini_key.indexed.items()
        }
        setting.index_lines = dict(ini_key.index_lines)
    return settings


def _unknown_key(section: str, written: str, known: Mapping[str, _Key]) -> str:
    message = f"unknown key in [{section}]"
    close = difflib.get_close_matches(written, list(known), n=1)
    return f"{message}; did you mean {close[0]}?" if close else message


def _interface_names(settings: Mapping[str, _Setting]) -> Dict[str, int]:
    """Every index any key of the section uses, in order of first appearance, with the
    line where it first appears.  (`key[]` counts per key, so the positional examples
    of the documentation get "0", "1"... for each key separately.)"""
    first_line: Dict[str, int] = {}
    for setting in settings.values():
        for index, line in setting.index_lines.items():
            first_line[index] = min(line, first_line.get(index, line))
    return dict(sorted(first_line.items(), key=lambda item: item[1]))


def _values_for(settings: Mapping[str, _Setting], interface: str, target: type) -> Dict[str, Any]:
    """The fields of `target` that interface `interface` gets; the others keep their
    defaults (and `origins`, when `target` has that field, says which were written)."""
    return _fields_of(_reads_for(settings, interface), target)


# Where a value came from, for check-config: the file, or a preset.
FILE = "file"


def _origin(read: _Read) -> str:
    return read.label[read.label.index("(") + 1:-1] if read.label.endswith(")") else FILE


def _which(interface: str) -> str:
    """Names an interface at the end of a message ("" is the only one: no need)."""
    return f" (interface {interface!r})" if interface else ""


# -- presets -----------------------------------------------------------------------------


def _reads_for(settings: Mapping[str, _Setting], interface: str) -> Dict[str, _Read]:
    """What the file says for interface `interface`, by settings name."""
    reads = {}
    for name, setting in settings.items():
        read = setting.for_interface(interface)
        if read is not None:
            reads[name] = read
    return reads


def _with_preset(
    section: str, settings: Mapping[str, _Setting], interface: str, context: _Context,
    keys: Mapping[str, "_Key"],
) -> Dict[str, _Read]:
    """The file's values for `interface`, completed by its preset: every key the preset
    defines and the file does not give for this interface (plainly or with its index) is
    read from the preset's text, with the file's readers, as if written on the preset's
    line.  A value written empty (`key = ""`) is given: it overrides the preset too."""
    reads = _reads_for(settings, interface)
    chosen = reads.get("preset")
    if chosen is None or chosen.value is None:
        return reads
    preset = presets.PRESETS[chosen.value]
    texts = preset.section(section)
    if not texts:
        raise context.error(
            chosen.line, chosen.label,
            f"preset {preset.name} ({preset.title}) has nothing for [{section}]"
            f"{_which(interface)}; remove it there",
        )
    auth_user = reads["auth_user"].value if "auth_user" in reads else None
    for name, text in texts.items():
        if name in reads:
            continue
        if presets.AUTH_USER in text:
            if not auth_user:
                raise context.error(
                    chosen.line, chosen.label,
                    f"preset {preset.name} builds {name} from auth_user ({preset.auth_user});"
                    f" set auth_user{_which(interface)}",
                )
            text = presets.fill(text, auth_user)
        label = f"{name} (preset {preset.name})"
        reads[name] = _convert(keys[name], label, IniValue(text, chosen.line), context)
    return reads


def _warn_preset_needs(
    section: str, reads: Mapping[str, _Read], interface: str, context: _Context
) -> None:
    chosen = reads.get("preset")
    if chosen is None or chosen.value is None:
        return
    preset = presets.PRESETS[chosen.value]
    for name, hint in preset.needs(section).items():
        if name not in reads:
            context.warn(
                chosen.line, chosen.label,
                f"preset {preset.name} needs {name} = {hint}; without it every"
                f" {'message' if section == 'websms' else 'webhook'} fails{_which(interface)}",
            )


def _fields_of(reads: Mapping[str, _Read], target: type) -> Dict[str, Any]:
    names = {spec.name for spec in dataclasses.fields(target)}
    values = {name: read.value for name, read in reads.items() if name in names}
    if "origins" in names:
        values["origins"] = tuple(sorted((name, _origin(read)) for name, read in reads.items()
                                         if name in names))
    return values


def _read_interfaces(section: IniSection, context: _Context, keys: Mapping[str, "_Key"],
                     target: type, ignored: Optional[Mapping[str, str]] = None) -> tuple:
    """The interfaces of a channel section, one `target` each: named by the [index]es its
    keys use (none: one interface named ""); a plain value applies to every interface,
    an indexed one to its own."""
    settings = _read_section(section, context, keys, ignored)
    names = list(_interface_names(settings)) or [""]
    return tuple(target(name=name, **_values_for(settings, name, target)) for name in names)


def _index_lines(section: IniSection) -> Dict[str, int]:
    """The interface names a section's keys use, with the line of the first (read from
    the ini as written, before any key is checked)."""
    first: Dict[str, int] = {}
    for key in section.keys.values():
        for index, line in key.index_lines.items():
            first[index] = min(line, first.get(index, line))
    return first
