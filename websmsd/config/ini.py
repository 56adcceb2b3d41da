"""PHP ini syntax, as PHP's ``parse_ini_file(file, true)`` (INI_SCANNER_NORMAL) reads it.

The result mirrors what parse_ini_file() returns, plus line numbers, so that every error
and notice can say ``file:line: key: why``.  Quirks kept: unquoted yes/no become "1"/"",
``key[] = v`` counts per key, a later line of the other form (plain or indexed) replaces
an earlier one.  Pure Python.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple


# ---------------------------------------------------------------------------------------
# Errors and notices: both say where, as PATH:LINE: KEY: MESSAGE.


def _locate(path: str, line: Optional[int], key: Optional[str], message: str) -> str:
    parts = [path if line is None else f"{path}:{line}"]
    if key:
        parts.append(key)
    parts.append(message)
    return ": ".join(parts)


class ConfigError(Exception):
    """websms.conf cannot be used as written; the daemon must not start."""

    def __init__(self, path: str, line: Optional[int], key: Optional[str], message: str):
        super().__init__(path, line, key, message)
        self.path = path
        self.line = line
        self.key = key
        self.message = message

    def __str__(self) -> str:
        return _locate(self.path, self.line, self.key, self.message)


# ---------------------------------------------------------------------------------------
# PHP ini syntax.  The result mirrors what parse_ini_file() returns, plus line numbers.


@dataclass
class IniValue:
    text: str
    line: int
    # The unquoted word (yes, None, ...) that PHP read as the boolean "1" or "".
    boolean_word: Optional[str] = None


@dataclass
class IniKey:
    """One key of a section: a plain value, or an array of indexed values (not both)."""

    name: str
    plain: Optional[IniValue] = None
    indexed: Optional[Dict[str, IniValue]] = None  # in PHP array order
    index_lines: Dict[str, int] = field(default_factory=dict)  # where each index began
    # The plain value a later `key[i] = ...` replaced (PHP drops it): a section that
    # reads a plain value as every interface's default ([goip]) still has it.
    replaced: Optional[IniValue] = None

    @property
    def line(self) -> int:
        if self.plain is not None:
            return self.plain.line
        return min(self.index_lines.values())


@dataclass
class IniSection:
    name: str
    line: int
    keys: Dict[str, IniKey] = field(default_factory=dict)


@dataclass
class IniFile:
    path: str
    sections: Dict[str, IniSection] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Dict[str, Any]]:
        """The file as PHP's parse_ini_file(file, true) sees it (all values strings)."""
        return {
            section.name: {
                key.name: (
                    key.plain.text
                    if key.plain is not None
                    else {index: value.text for index, value in key.indexed.items()}
                )
                for key in section.keys.values()
            }
            for section in self.sections.values()
        }


# INI_SCANNER_NORMAL turns these unquoted words (any case) into booleans, i.e. "1" or "".
_BOOLEAN_WORDS = {
    "true": "1", "on": "1", "yes": "1",
    "false": "", "off": "", "no": "", "none": "", "null": "",
}


# Outside quotes PHP reads these as expression operators (`E_ALL & ~E_NOTICE`), `=` ends
# the value and a quote starts a quoted part that is glued on.  Each either fails the
# whole file in PHP or means something nobody writes on purpose: refuse, ask for quotes.
_UNQUOTED_SPECIALS = {
    "=": "'=' may not appear in an unquoted value (PHP refuses the whole file)",
    '"': "a double quote inside an unquoted value",
    "'": "a single quote inside an unquoted value",
    "{": "'{' outside ${...} in an unquoted value",
    "}": "'}' outside ${...} in an unquoted value",
    **{c: f"'{c}' is a PHP ini operator in an unquoted value" for c in "&|^~()!"},
}


_ASSIGNMENT = re.compile(
    r"[ \t]*(?P<name>[^=\[\]\n;\"']*?)[ \t]*(?:\[(?P<index>[^\]\n]*)\][ \t]*)?=[ \t]*"
)


_SECTION_HEADER = re.compile(r"\[(?P<name>[^\]\n]*)\][ \t]*(?:;.*)?")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_BAD_INDEX_CHARS = re.compile(r"[\"'$;\\\x00-\x1f\x7f]")


# A PHP array key that is a canonical decimal integer is an integer key ("5", not "05").
_PHP_INTEGER_KEY = re.compile(r"-?[1-9][0-9]*|0")


def _next_php_index(array: Dict[str, IniValue]) -> str:
    """The index PHP gives `key[] = v`: one more than the largest integer key, else 0."""
    integers = [int(k) for k in array if _PHP_INTEGER_KEY.fullmatch(k) and abs(int(k)) < 2**63]
    return str(max(integers) + 1 if integers else 0)


def parse_ini(
    text: str, path: str = "<string>", environ: Optional[Mapping[str, str]] = None
) -> IniFile:
    """Read PHP ini text (sections, keys, values; no meaning yet) or raise ConfigError."""
    return _IniReader(text, path, os.environ if environ is None else environ).read()


class _IniReader:
    def __init__(self, text: str, path: str, environ: Mapping[str, str]):
        if text.startswith("\ufeff"):  # a UTF-8 BOM (PHP itself would choke on it)
            text = text[1:]
        self.text = text.replace("\r\n", "\n").replace("\r", "\n")
        self.environ = environ
        self.ini = IniFile(path)
        self.section: Optional[IniSection] = None
        self.pos = 0
        self.line = 1

    def error(
        self, message: str, line: Optional[int] = None, key: Optional[str] = None
    ) -> ConfigError:
        return ConfigError(self.ini.path, self.line if line is None else line, key, message)

    def read(self) -> IniFile:
        while self.pos < len(self.text):
            body = self.text[self.pos : self._line_end(self.pos)].strip(" \t")
            if not body or body.startswith(";"):
                self._next_line(self.pos)
            elif body.startswith("#"):
                # Not a comment in PHP 7+, but such a line was harmless there (a bare
                # word, ignored), so files may have them.
                message = "'#' starts no comment in PHP ini files; use ';'"
                self.ini.warnings.append(_locate(self.ini.path, self.line, None, message))
                self._next_line(self.pos)
            elif body.startswith("["):
                self._section_header(body)
                self._next_line(self.pos)
            else:
                self._assignment()
        return self.ini

    # -- lines -------------------------------------------------------------------------

    def _line_end(self, pos: int) -> int:
        end = self.text.find("\n", pos)
        return len(self.text) if end < 0 else end

    def _next_line(self, pos: int) -> None:
        self.pos = self._line_end(pos) + 1
        self.line += 1

    def _section_header(self, body: str) -> None:
        match = _SECTION_HEADER.fullmatch(body)
        if not match:
            raise self.error("a section header is [name], optionally followed by a ; comment")
        name = match["name"].strip()
        if name in self.ini.sections:
            # PHP would silently drop everything read for the first one.
            first = self.ini.sections[name].line
            raise self.error(f"section [{name}] appears again (first at line {first}); merge the two")
        self.section = self.ini.sections[name] = IniSection(name, self.line)

    def _assignment(self) -> None:
        match = _ASSIGNMENT.match(self.text, self.pos)
        if not match:
            raise self.error("expected key = value, key[index] = value or [section]")
        name, index = match["name"], match["index"]
        if not name:
            raise self.error("a value without a key name")
        label = name if index is None else f"{name}[{index.strip()}]"
        if self.section is None:
            raise self.error("a key outside any section", key=label)
        if index is not None:
            index = index.strip()
            if _BAD_INDEX_CHARS.search(index):
                raise self.error(
                    "an index may not contain quotes, '$', ';', '\\' or control characters", key=label
                )
        value = self._value(match.end(), label)
        self._store(name, index, value)

    def _store(self, name: str, index: Optional[str], value: IniValue) -> None:
        keys = self.section.keys
        if index is None:
            # `key = a` replaces whatever the key held, an array included.
            keys[name] = IniKey(name, plain=value)
            return
        entry = keys.get(name)
        if entry is None or entry.indexed is None:
            # `key[i] = b` after `key = a` starts a new array: the plain value is gone.
            entry = keys[name] = IniKey(name, indexed={},
                                        replaced=entry.plain if entry is not None else None)
        if index == "":
            index = _next_php_index(entry.indexed)
        entry.index_lines.setdefault(index, value.line)
        entry.indexed[index] = value

    # -- values ------------------------------------------------------------------------

    def _value(self, pos: int, label: str) -> IniValue:
        """Read the value starting at pos; leave self at the start of the next line."""
        start_line = self.line
        quote = self.text[pos : pos + 1]
        if quote == '"':
            text, pos = self._double_quoted(pos + 1, label)
        elif quote == "'":
            text, pos = self._single_quoted(pos + 1, label)
        else:
            return self._unquoted(pos, label)
        rest = self.text[pos : self._line_end(pos)].strip(" \t")
        if rest and not rest.startswith(";"):
            # PHP would glue it on to the quoted part.
            raise self.error(
                f"text after the closing quote ({rest!r}); put it all inside the quotes", key=label
            )
        self._next_line(pos)
        return IniValue(text, start_line)

    def _unquoted(self, pos: int, label: str) -> IniValue:
        end = self._line_end(pos)
        raw = self.text[pos:end]
        # `;` starts a comment anywhere outside quotes, even without a space before it.
        raw = raw.split(";", 1)[0].strip(" \t")
        out = []
        i = 0
        while i < len(raw):
            if raw.startswith("${", i):
                value, i = self._environment_variable(raw, i, label)
                out.append(value)
                continue
            char = raw[i]
            if char in _UNQUOTED_SPECIALS:
                reason = _UNQUOTED_SPECIALS[char]
                raise self.error(f"{reason}; put the value in double quotes", key=label)
            out.append(char)
            i += 1
        line = self.line
        self._next_line(pos)
        word = raw.lower()
        if word in _BOOLEAN_WORDS:
            return IniValue(_BOOLEAN_WORDS[word], line, boolean_word=raw)
        for token in raw.split():
            if token.lower() in _BOOLEAN_WORDS:
                # `ok yes` is a syntax error in PHP: the boolean cannot be joined to text.
                raise self.error(
                    f"unquoted {token!r} inside a value is a PHP boolean;"
                    " put the value in double quotes",
                    line=line, key=label,
                )
        return IniValue("".join(out), line)

    def _double_quoted(self, pos: int, label: str) -> Tuple[str, int]:
        """The text up to the closing quote (it may span lines), with PHP's escapes."""
        start_line = self.line
        out = []
        while pos < len(self.text):
            char = self.text[pos]
            if char == '"':
                return "".join(out), pos + 1
            if char == "\\" and pos + 1 < len(self.text):
                escaped = self.text[pos + 1]
                # PHP unescapes only \" \\ and \$; any other backslash stays, so that
                # `"tcp:80:interface=\:\:1"` reaches the endpoint parser intact.
                out.append(escaped if escaped in '"\\$' else char + escaped)
                if escaped == "\n":
                    self.line += 1
                pos += 2
                continue
            if self.text.startswith("${", pos):
                value, pos = self._environment_variable(self.text, pos, label)
                out.append(value)
                continue
            if char == "\n":
                self.line += 1
            out.append(char)
            pos += 1
        raise self.error("the double quote is never closed", line=start_line, key=label)

    def _single_quoted(self, pos: int, label: str) -> Tuple[str, int]:
        """PHP's raw string: no escapes, no ${}; it may span lines."""
        end = self.text.find("'", pos)
        if end < 0:
            raise self.error("the single quote is never closed", key=label)
        text = self.text[pos:end]
        self.line += text.count("\n")
        return text, end + 1

    def _environment_variable(self, text: str, pos: int, label: str) -> Tuple[str, int]:
        """`${NAME}` at pos: the variable's value ("" if unset) and the position after it."""
        close = text.find("}", pos)
        newline = text.find("\n", pos)
        if close < 0 or 0 <= newline < close:
            raise self.error("'${' without a closing '}'", key=label)
        name = text[pos + 2 : close].strip(" \t")
        if not _ENV_NAME.fullmatch(name):
            raise self.error(f"${{{name}}} is not an environment variable name", key=label)
        return self.environ.get(name, ""), close + 1
