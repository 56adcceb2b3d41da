"""The websms.conf reader: PHP ini text in, websmsd.settings objects out.

websms.conf files written for the PHP WebSMS service must work unchanged, so the syntax
is that of PHP's ``parse_ini_file(file, true)`` (INI_SCANNER_NORMAL), quirks included:
unquoted yes/no become "1"/"", ``key[] = v`` counts per key, a later line of the other
form (plain or indexed) replaces an earlier one, and the interfaces of a section are the
``[index]`` names its keys use.  Where PHP silently ignored or guessed (an unknown key, a
bad value, an older key name), this reader refuses with ``file:line: key: why``, or reads
the value and says so in ``Settings.warnings``.

Pure Python (no Twisted): the only I/O is reading the one file in `load`.

    settings = load("/etc/asterisk/websms.conf")   # or raises ConfigError
    print(report(settings))                        # what `websmsd check-config` prints
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from websmsd import presets
from websmsd.settings import (
    AstQueueSettings,
    DaemonSettings,
    InboundInterface,
    InboundSettings,
    Network,
    OutboundInterface,
    OutboundSettings,
    Settings,
)

__all__ = [
    "ConfigError", "load", "loads", "report", "parse_ini", "resp_check_pattern", "webhook_url",
]


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
            entry = keys[name] = IniKey(name, indexed={})
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


# ---------------------------------------------------------------------------------------
# Value readers: the text of one value -> its typed value, or ValueError saying what is
# wrong.  `note` records a warning about the value (the caller adds file:line: key).

Note = Callable[[str], None]
Reader = Callable[[str, Note], Any]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _single_line(text: str) -> str:
    if _CONTROL.search(text):
        raise ValueError("control characters (such as a line break) are not allowed here")
    return text


def _text(text: str, note: Note) -> str:
    if not text:
        raise ValueError("must not be empty")
    return _single_line(text)


def _optional_text(text: str, note: Note) -> Optional[str]:
    # PHP tests these with empty(): "" is the same as not set.
    return _single_line(text) if text else None


def _any_text(text: str, note: Note) -> str:
    return text  # resp_ack is sent back verbatim; it may span lines


_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")
_PORT = re.compile(r"[0-9]{1,5}")


def _url_host(text: str, note: Note) -> str:
    text = _single_line(text)
    scheme, separator, rest = text.partition("://")
    if not separator:
        # The PHP handed this to curl, which takes a URL without a scheme as http://
        # (the guide's own example, `url_host = api.example.com`, relies on it).
        note(f"url_host {text!r} has no scheme: using http://{text} as curl did;"
             " write https:// if the provider has it")
        scheme, rest, text = "http", text, "http://" + text
    if scheme.lower() not in ("http", "https"):
        raise ValueError(f"the scheme must be http or https, not {scheme!r}")
    if "@" in rest:
        raise ValueError("credentials belong in auth_user and auth_secret, not in url_host")
    # A path here is legal (the URL is url_host + url_path, plain concatenation), but it
    # is not part of the zadarma signature, which covers url_path only.
    path = re.search(r"[/?#]", rest)
    if path:
        rest = rest[: path.start()]
    if rest.startswith("["):  # [IPv6]:port
        host, bracket, after = rest[1:].partition("]")
        port = after[1:] if after.startswith(":") else None
        valid_host = bool(bracket) and _is_ip(host, version=6) and (after == "" or port is not None)
    elif rest.count(":") > 1:
        raise ValueError(
            f"{rest!r}: an IPv6 address goes in brackets, as in https://[2001:db8::1]:8443"
        )
    else:
        host, colon, port = rest.partition(":")
        port = port if colon else None
        valid_host = bool(_HOST_NAME.fullmatch(host))
    if not valid_host:
        raise ValueError(f"{rest!r} is not a host name or address (IPv6 goes in brackets)")
    if port is not None and not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
        raise ValueError(f"{port!r} is not a TCP port (1-65535)")
    return text


def _is_ip(text: str, version: Optional[int] = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version


def _url_path(text: str, note: Note) -> str:
    if not text.startswith("/"):
        raise ValueError(f"{text!r} must start with '/'")
    if re.search(r"\s", text):
        raise ValueError("must not contain spaces or line breaks")
    return text


def _auth_method(text: str, note: Note) -> str:
    if text == "":
        note('empty (an unquoted none reads as ""): read as none, no authentication')
        return "none"
    if text not in AUTH_METHODS:
        raise ValueError(f"{text!r} is not one of {', '.join(AUTH_METHODS)} (lower case)")
    return text


AUTH_METHODS = ("none", "plain", "basic", "zadarma", "bearer", "header", "query")
SIG_METHODS = ("twilio", "telnyx", "plivo", "plivo-v3", "vonage", "zadarma")
DLR_STATUSES = ("sent", "delivered", "failed")


def _choice(*choices: str, upper: bool = False) -> Reader:
    def read(text: str, note: Note) -> str:
        value = text.upper() if upper else text.lower()
        if value not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return value

    return read


def _optional_choice(*choices: str) -> Reader:
    read_choice = _choice(*choices)

    def read(text: str, note: Note) -> Optional[str]:
        return read_choice(text, note) if text else None

    return read


def _header_name(text: str, note: Note) -> Optional[str]:
    if not text:
        return None
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", text):
        raise ValueError(f"{text!r} is not an HTTP header name")
    return text


def _country(text: str, note: Note) -> Optional[str]:
    if not text:
        return None
    if not re.fullmatch(r"[A-Za-z]{2}", text):
        raise ValueError(f"{text!r} is not a two-letter ISO 3166 country code (e.g. US, SE)")
    return text.upper()


def _path(text: str, note: Note) -> Optional[str]:
    """A key or a dotted path into JSON (`data.payload.to.0.phone_number`, `*` wildcards)."""
    if not text:
        return None
    _single_line(text)
    if any(part == "" for part in text.split(".")) and text != ".":
        raise ValueError(f"{text!r} has an empty part between dots")
    return text


def _filter(text: str, note: Note) -> Optional[str]:
    """`path=value` (the value at path equals value) or `path` (present and not empty)."""
    if not text:
        return None
    _path(text.partition("=")[0], note)
    return text


def _fields_list(text: str, note: Note) -> Tuple[str, ...]:
    fields = tuple(f.strip() for f in text.split(",") if f.strip())
    for field in fields:
        if field not in ("to", "from", "body"):
            raise ValueError(f"{field!r} is not one of to, from, body")
    return fields


def _dlr_map(text: str, note: Note) -> Optional[str]:
    if not text:
        return None
    for entry in text.split(","):
        word, separator, ours = entry.partition("=")
        if not separator or not word.strip() or ours.strip() not in DLR_STATUSES:
            raise ValueError(f"{entry!r} is not provider_word=sent|delivered|failed")
    return text


def _public_url(text: str, note: Note) -> Optional[str]:
    if not text:
        return None
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", text):
        raise ValueError(f"{text!r} is not an http(s) URL without query")
    return text.rstrip("/")


def _preset_name(text: str, note: Note) -> Optional[str]:
    if not text:
        return None  # `preset = ""` (or an unquoted none): no preset
    preset = presets.get(text)
    if preset is None:
        close = difflib.get_close_matches(text.strip().lower(), presets.NAMES, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(f"unknown preset {text!r}{hint} (known presets: {', '.join(presets.NAMES)})")
    return preset.name


def _numform(text: str, note: Note) -> Optional[str]:
    if not text:
        return None
    if text.lower() == "omit+":
        # The older documentation's value; the current PHP calls it no+.
        note("omit+ (an older value) is read as no+: a leading + and then 00 are removed")
        return "no+"
    if text.lower() not in ("e164", "e.164", "no+", "e.123"):
        raise ValueError(f"{text!r} is not one of E164, E.164, no+ (or omit+), E.123")
    return text


def resp_check_pattern(text: str) -> "re.Pattern[str]":
    """The compiled regex of a `/regex/flags` resp_check (PCRE flags i m s x u), or ValueError."""
    match = re.fullmatch(r"/(.*)/([A-Za-z]*)", text, re.DOTALL)
    if not match:
        raise ValueError("a /regex/ resp_check must end with '/' (and optional flags i, m, s, x, u)")
    flags = 0
    for letter in match[2]:
        if letter not in _PCRE_FLAGS:
            raise ValueError(f"regex flag {letter!r} is not supported (i, m, s, x, u are)")
        flags |= _PCRE_FLAGS[letter]
    try:
        return re.compile(match[1], flags)
    except re.error as exc:
        raise ValueError(f"the regex does not compile: {exc}") from None


_PCRE_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "u": 0}


def _key_value(text: str, what: str) -> str:
    """`key=value` where PHP keeps only the first two parts: refuse a value it would cut."""
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise ValueError(f"{text!r} is not {what}")
    if "=" in value:
        raise ValueError(f"{text!r} has more than one '='; PHP would drop everything after the second")
    return text


def _resp_check(text: str, note: Note) -> Optional[str]:
    if not text:
        return None
    _single_line(text)
    if text.startswith("/"):
        resp_check_pattern(text)
        return text
    return _key_value(text, "key=value or /regex/")


def _val_static(text: str, note: Note) -> Optional[str]:
    if not text:
        return None
    _single_line(text)
    for entry in text.split(","):
        if entry == "":
            continue  # a stray comma: PHP skips it too
        _key_value(entry, "key=value")
        key = entry.partition("=")[0]
        if key != key.strip():
            raise ValueError(f"the key of {entry!r} has spaces around it (PHP does not trim them)")
    return text


def _val_unicode(text: str, note: Note) -> Optional[str]:
    if not text:
        return None
    if text.lower() == "ucs-2":
        return text
    if "=" not in text:
        # e.g. UTF-8, which older files carry over from charset: harmless, as in PHP.
        note(f"{text!r} is neither UCS-2 nor key=value: it changes nothing")
        return _single_line(text)
    return _key_value(_single_line(text), "UCS-2 or key=value")


def _networks(text: str, note: Note) -> Tuple[Network, ...]:
    networks = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            raise ValueError("an empty entry in the comma list")
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR") from None
        if ipaddress.ip_address(entry.partition("/")[0]) != network.network_address:
            note(f"{entry} has host bits set; read as {network}")
        networks.append(network)
    return tuple(networks)


def _allow_networks(text: str, note: Note) -> Tuple[Network, ...]:
    if not text.strip():
        raise ValueError("the value is empty; to allow every source, remove the line")
    return _networks(text, note)


def _allow_paths(text: str, note: Note) -> Tuple[str, ...]:
    if not text.strip():
        raise ValueError("the value is empty; to allow every path, remove the line")
    paths = []
    for entry in text.split(","):
        entry = entry.strip()
        _url_path(entry, note)
        if "?" in entry:
            # PHP compared the whole request URI; websmsd compares the path alone.
            raise ValueError(
                f"{entry!r}: url_path is matched against the path without the query string,"
                " so this entry could never match"
            )
        paths.append(entry)
    return tuple(paths)


def _proxy_networks(text: str, note: Note) -> Tuple[Network, ...]:
    return _networks(text, note) if text.strip() else ()  # empty: no trusted proxy


def _proxy_header(text: str, note: Note) -> Optional[str]:
    if not text:
        return None  # no proxy handling
    if not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise ValueError(f"{text!r} is not a header name such as HTTP_X_FORWARDED_FOR")
    return text


# -- [astqueue]: these values end up in call files -------------------------------------


def _call_file_text(text: str) -> str:
    # A line break would add a directive to the call file; ';' (anywhere) and '#' (first
    # or after a space) start a comment that cuts the value.
    if _CONTROL.search(text) or ";" in text:
        raise ValueError("would break its call-file line: no line breaks, control characters or ';'")
    if text.startswith("#") or re.search(r"\s#", text):
        raise ValueError("'#' at the start or after a space starts a comment in a call file")
    return text


def _call_file_value(text: str, note: Note) -> str:
    if not text:
        raise ValueError("must not be empty")
    return _call_file_text(text)


def _optional_call_file_value(text: str, note: Note) -> Optional[str]:
    return _call_file_text(text) if text else None


def _archive(text: str, note: Note) -> str:
    # Unquoted yes/no reach Asterisk as "1"/"", which it reads as true/false too.
    return _call_file_text(text)


def _message_encode(text: str, note: Note) -> str:
    _call_file_value(text, note)
    if text != "rfc3986":
        note("not rfc3986: bodies are written to call files without encoding")
    return text


def _count(text: str, note: Note) -> str:
    if not re.fullmatch(r"[0-9]+", text):
        raise ValueError(f"{text!r} is not a whole number (0 or more)")
    return str(int(text))


def _priority(text: str, note: Note) -> str:
    if re.fullmatch(r"[0-9]+", text):
        if int(text) < 1:
            raise ValueError("dialplan priorities start at 1")
        return str(int(text))
    if not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise ValueError(f"{text!r} is neither a priority number nor a priority label")
    return text


def _directory(text: str, note: Note) -> str:
    # A relative path is relative to the directory of websms.conf (see _relative_to).
    if not text:
        raise ValueError("must not be empty")
    return _single_line(text)


def _file_mode(text: str, note: Note) -> Optional[int]:
    if not text:
        return None
    if not re.fullmatch(r"[0-7]{3,4}", text):
        raise ValueError(f"{text!r} is not an octal file mode such as 0640")
    return int(text, 8)


_OWNER_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?"  # a user or group name, or a number


def _file_owner(text: str, note: Note) -> Optional[str]:
    if not text:
        return None
    if not re.fullmatch(f"{_OWNER_NAME}(?::{_OWNER_NAME})?", text):
        raise ValueError(f"{text!r} is not user or user:group")
    return text


# -- [daemon] ----------------------------------------------------------------------------

_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_BYTES = {"": 1, "k": 1024, "K": 1024, "M": 1024 * 1024}


def _duration(text: str, note: Note) -> float:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)[ \t]*([smhd]?)", text)
    if not match:
        raise ValueError(
            f"{text!r} is not a duration: seconds, or a number with s, m, h or d (90s, 5m, 2d)"
        )
    seconds = float(match[1]) * _SECONDS[match[2]]
    if seconds <= 0:
        raise ValueError("must be more than 0")
    return seconds


def _size(text: str, note: Note) -> int:
    match = re.fullmatch(r"([0-9]+)[ \t]*([kKM]?)", text)
    if not match:
        raise ValueError(f"{text!r} is not a size: bytes, or a number with k or M (64k, 1M)")
    size = int(match[1]) * _BYTES[match[2]]
    if size <= 0:
        raise ValueError("must be more than 0")
    return size


def _positive_integer(text: str, note: Note) -> int:
    if not re.fullmatch(r"[0-9]+", text) or int(text) < 1:
        raise ValueError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


def _listener(text: str, note: Note) -> Optional[str]:
    # "" (also what an unquoted none reads as) and "none" mean: no listener.
    if text == "" or text.lower() == "none":
        return None
    _single_line(text)
    _parse_endpoint(text)
    return text


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
        if not (_PORT.fullmatch(value) and int(value) <= 65535):
            raise ValueError(f"port {value!r} is not a TCP port (0-65535)")
    elif name in ("backlog", "index"):
        if not re.fullmatch(r"[0-9]+", value) or (name == "backlog" and int(value) < 1):
            raise ValueError(f"{name} {value!r} is not a whole number")
    elif name == "interface":
        if value and not _is_ip(value, version=6 if kind == "tcp6" else None):
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


def _split_endpoint(description: str) -> Tuple[List[str], Dict[str, str]]:
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


def _parse_endpoint(description: str) -> Tuple[str, Dict[str, str]]:
    """The type of a server endpoint string and its parameters by name, or ValueError."""
    positional, keywords = _split_endpoint(description)
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


# ---------------------------------------------------------------------------------------
# The keys of each section.  The name is that of the settings field; older names are
# read as aliases (the current PHP ignores them, leaving the defaults).


@dataclass(frozen=True)
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


_OUTBOUND_KEYS = _keys(
    _Key("url_host", _url_host, ("host",)),
    _Key("url_path", _url_path, ("path",)),
    _Key("auth_method", _auth_method, reads_booleans=True),
    _Key("auth_user", _optional_text),
    _Key("auth_secret", _optional_text, ("auth_passwd",)),
    _Key("key_user", _optional_text),
    _Key("key_secret", _optional_text),
    _Key("key_to", _text),
    _Key("key_from", _text),
    _Key("key_body", _text),
    _Key("resp_check", _resp_check, ("response_check",)),
    _Key("val_numform", _numform, ("number_format",)),
    _Key("val_static", _val_static),
    _Key("val_unicode", _val_unicode),
    _Key("tls_ca", _optional_text),
    _Key("encoding", _choice("form", "json")),
    _Key("method", _choice("POST", "PUT", "GET", upper=True)),
    _Key("auth_header", _header_name),
    _Key("auth_scheme", _optional_text),
    _Key("resp_id", _path),
    _Key("num_country", _country),
    _Key("preset", _preset_name),
)

_PROXY_NOT_INDEXABLE = (
    "cannot be indexed: it is used before an interface is chosen"
    " (PHP took an indexed value as unset, which turned the proxy handling off)"
)
_INBOUND_KEYS = _keys(
    _Key("key_to", _text),
    _Key("key_from", _text),
    _Key("key_body", _text),
    _Key("key_echo", _optional_text),
    _Key("key_id", _optional_text),
    _Key("key_lookup", _choice("any", "path")),
    _Key("resp_ack", _any_text, ("report_success",)),
    _Key("remt_addr", _allow_networks, ("permit_addr", "remote_addr")),
    _Key("url_path", _allow_paths, ("request_uri",)),
    _Key("key_events", _path),
    _Key("val_to", _optional_text),
    _Key("val_urldecode", _fields_list),
    _Key("key_media", _path),
    _Key("num_country", _country),
    _Key("msg_filter", _filter),
    _Key("dlr_filter", _filter),
    _Key("dlr_id", _path),
    _Key("dlr_status", _path),
    _Key("dlr_reason", _path),
    _Key("dlr_map", _dlr_map),
    _Key("resp_type", _text),
    _Key("sig_method", _optional_choice(*SIG_METHODS)),
    _Key("sig_secret", _optional_text),
    _Key("sig_url", _public_url),
    _Key("sig_tolerance", _duration),
    _Key("preset", _preset_name),
    _Key("prox_addr", _proxy_networks, ("proxy_addr",), _PROXY_NOT_INDEXABLE, reads_booleans=True),
    _Key("prox_header", _proxy_header, ("proxy_header",), _PROXY_NOT_INDEXABLE, reads_booleans=True),
)

_NO_INDEX = "cannot be indexed: it has one value, not one per interface"
_ASTQUEUE_KEYS = _keys(
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
)

_LISTENER_KEYS = ("webhook_listen", "agi_listen", "status_listen")
_DAEMON_KEYS = _keys(
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

# Keys of the older documentation that never did anything: read, ignored, mentioned.
_IGNORED_KEYS = {
    "websms": {"charset": "charset is ignored (the PHP service did not use it either)"},
    "websmsd": {"key_account": "key_account is ignored (the PHP service did not use it either)"},
}
_SECTION_KEYS = {
    "websms": _OUTBOUND_KEYS,
    "websmsd": _INBOUND_KEYS,
    "astqueue": _ASTQUEUE_KEYS,
    "daemon": _DAEMON_KEYS,
}


# ---------------------------------------------------------------------------------------
# From ini keys to settings.


@dataclass(frozen=True)
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


def _read_section(section: IniSection, context: _Context) -> Dict[str, _Setting]:
    """The keys of one section, by settings name, read and checked one by one."""
    known = _SECTION_KEYS[section.name]
    ignored = _IGNORED_KEYS.get(section.name, {})
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
    """The fields of `target` that interface `interface` gets; the others keep their defaults."""
    fields = {spec.name for spec in dataclasses.fields(target)}
    values = {}
    for name, setting in settings.items():
        read = setting.for_interface(interface)
        if read is not None and name in fields:
            values[name] = read.value
    return values


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
    section: str, settings: Mapping[str, _Setting], interface: str, context: _Context
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
    keys = _SECTION_KEYS[section]
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
    return {name: read.value for name, read in reads.items() if name in names}


# -- [websms] ----------------------------------------------------------------------------

_CREDENTIALS = {
    "plain": ("auth_user", "auth_secret", "key_user", "key_secret"),
    "basic": ("auth_user", "auth_secret"),
    "zadarma": ("auth_user", "auth_secret"),
    "bearer": ("auth_secret",),
    "header": ("auth_secret",),
    "query": ("key_secret", "auth_secret"),
}


def _outbound(section: Optional[IniSection], context: _Context) -> OutboundSettings:
    if section is None:
        return OutboundSettings()
    settings = _read_section(section, context)
    names = list(_interface_names(settings)) or [""]
    interfaces = []
    for name in names:
        reads = _with_preset("websms", settings, name, context)
        interface = OutboundInterface(name=name, **_fields_of(reads, OutboundInterface))
        interface = _check_credentials(interface, reads, section, context)
        _check_request_shape(interface, reads, section, context)
        interfaces.append(interface)
        _warn_preset_needs("websms", reads, name, context)
    return OutboundSettings(tuple(interfaces))


def _check_request_shape(
    interface: OutboundInterface,
    reads: Mapping[str, "_Read"],
    section: IniSection,
    context: _Context,
) -> None:
    """Build a request once at start, so that key paths that collide, or a `:=` value
    that is no JSON, stop the daemon here rather than fail every message later."""
    if interface.encoding != "json":  # a form body takes every key literally, as the PHP
        return
    from websmsd.http import itsp  # its request builder is pure (no Twisted)

    try:
        itsp.json_document(itsp.build_fields(interface, "+15550000000", "+15550000001", "x"))
    except ValueError as e:
        for name in ("val_static", "key_to", "key_from", "key_body", "encoding"):
            read = reads.get(name)
            if read is not None:
                raise context.error(read.line, read.label,
                                    f"the request cannot be built: {e}{_which(interface.name)}")
        raise context.error(section.line, None, f"the request cannot be built: {e}")


def _check_credentials(
    interface: OutboundInterface,
    reads: Mapping[str, _Read],
    section: IniSection,
    context: _Context,
) -> OutboundInterface:
    """Refuse an auth_method whose credentials are incomplete (PHP sent such requests
    without authentication and logged a warning each time).  `reads`: what the file (or
    the interface's preset) says for this interface."""
    needed = _CREDENTIALS.get(interface.auth_method, ())
    # PHP tests them with empty(), for which "0" is as unset as "" (http/itsp.py too).
    missing = [name for name in needed if getattr(interface, name) in (None, "", "0")]
    if not missing:
        return interface
    method = reads.get("auth_method")
    given = [reads[name] for name in needed if name not in missing and name in reads]
    if method is None and not given:
        # Nothing about authentication at all, e.g. an outbound side nobody uses: the
        # default basic has nothing to send, so say plainly that there is no auth.
        context.warn(
            section.line, "auth_method",
            "no auth_method and no credentials: requests carry no authentication"
            + _which(interface.name),
        )
        return dataclasses.replace(interface, auth_method="none")
    where = method or given[0]
    raise context.error(
        where.line, where.label,
        f"auth_method {interface.auth_method} needs {', '.join(needed)};"
        f" missing: {', '.join(missing)}{_which(interface.name)}",
    )


# -- [websmsd] ---------------------------------------------------------------------------


@dataclass
class _InboundLines:
    """Where [websmsd] said what the webhook-listener checks (in `loads`) point at."""

    remt_addr: Optional[_Read] = None  # the first remt_addr read
    sig_method: Dict[str, _Read] = field(default_factory=dict)  # by interface


def _inbound(
    section: Optional[IniSection], context: _Context, lines: Optional[_InboundLines] = None
) -> InboundSettings:
    lines = _InboundLines() if lines is None else lines
    if section is None:
        return InboundSettings()
    settings = _read_section(section, context)
    names = _interface_names(settings)
    every_reads = {name: _with_preset("websmsd", settings, name, context) for name in names}
    default_reads = _with_preset("websmsd", settings, "", context)
    default = InboundInterface(name="", **_fields_of(default_reads, InboundInterface))
    interfaces = tuple(
        InboundInterface(name=name, **_fields_of(every_reads[name], InboundInterface))
        for name in names
    )
    for name, reads in (every_reads.items() if names else [("", default_reads)]):
        _warn_preset_needs("websmsd", reads, name, context)
        _warn_unsigned(reads, name, context)
        if "sig_method" in reads and reads["sig_method"].value is not None:
            lines.sig_method[name] = reads["sig_method"]
    if "remt_addr" in settings:
        lines.remt_addr = settings["remt_addr"].reads()[0]
    remt_addr, url_path = settings.get("remt_addr"), settings.get("url_path")
    proxy = {
        name: settings[name].plain.value for name in ("prox_addr", "prox_header") if name in settings
    }
    inbound = InboundSettings(
        interfaces=interfaces or (default,),
        default=default,
        remt_addr_plain=remt_addr.plain.value if remt_addr and remt_addr.plain else None,
        remt_addr_indexed=bool(remt_addr and remt_addr.indexed is not None),
        url_path_plain=url_path.plain.value if url_path and url_path.plain else None,
        url_path_indexed=bool(url_path and url_path.indexed is not None),
        **proxy,
    )
    _check_selection_order(remt_addr, list(names), _networks_overlap, context)
    _check_selection_order(url_path, list(names), _paths_overlap, context)
    _warn_unreachable(inbound, interfaces, names, context)
    return inbound


def _warn_unsigned(reads: Mapping[str, _Read], interface: str, context: _Context) -> None:
    method = reads.get("sig_method")
    if method is None or method.value is None:
        return
    secret = reads.get("sig_secret")
    if secret is None or not secret.value:
        chosen = reads.get("preset")
        preset = presets.PRESETS[chosen.value] if chosen and chosen.value else None
        what = f" ({preset.name}: {preset.sig_secret})" if preset and preset.sig_secret else ""
        context.warn(
            method.line, method.label,
            f"sig_method {method.value} is set but sig_secret is not: every webhook"
            f"{_which(interface)} is refused (403); give sig_secret{what}, or write"
            ' sig_method = "" to accept unsigned webhooks',
        )
    if method.value == "plivo":
        context.warn(
            method.line, method.label,
            "sig_method plivo also accepts Plivo's older V2 signature, which covers neither"
            " the query nor the body: one captured request lets anyone post any text to"
            f" this URL{_which(interface)}; write sig_method = plivo-v3 (Plivo sends V3 with"
            " every callback)",
        )


def _warn_unreachable(
    inbound: InboundSettings,
    interfaces: Sequence[InboundInterface],
    lines: Mapping[str, int],
    context: _Context,
) -> None:
    """Point out interfaces that InboundSettings.select can never return."""
    for interface in interfaces:
        name = interface.name
        if inbound.remt_addr_indexed and interface.remt_addr is None:
            context.warn(
                lines[name], None,
                f"interface {name!r} has no remt_addr of its own, and an indexed remt_addr"
                " refuses every source it does not list: it can never be chosen",
            )
        elif not inbound.remt_addr_indexed and not (inbound.url_path_indexed and interface.url_path):
            context.warn(
                lines[name], None,
                f"interface {name!r} can never be chosen:"
                f" give it a remt_addr[{name}] or url_path[{name}]",
            )


def _networks_overlap(first: Sequence[Network], second: Sequence[Network]) -> bool:
    return any(a.version == b.version and a.overlaps(b) for a in first for b in second)


def _paths_overlap(first: Sequence[str], second: Sequence[str]) -> bool:
    return bool(set(first) & set(second))


def _check_selection_order(
    setting: Optional[_Setting],
    names: List[str],
    overlap: Callable[[Any, Any], bool],
    context: _Context,
) -> None:
    """PHP chose the last matching index in the order of that key's own array; websmsd
    walks the interfaces in their order of first appearance in the section.  The two
    differ only when another key names an index first: refuse where that could change
    which interface a request gets, i.e. when both indexes can match one request."""
    if setting is None or setting.indexed is None:
        return
    rank = {name: position for position, name in enumerate(names)}
    order = list(setting.indexed)
    for position, earlier in enumerate(order):
        for later in order[position + 1 :]:
            if rank[later] < rank[earlier] and overlap(
                setting.indexed[earlier].value, setting.indexed[later].value
            ):
                read = setting.indexed[later]
                raise context.error(
                    read.line, read.label,
                    f"overlaps [{earlier}] and both can match one request, but interface"
                    f" {later!r} is named earlier in the section than {earlier!r}: PHP would"
                    f" choose {later!r} (last in {setting.key.name} order), websmsd {earlier!r}"
                    f" (last named); name {earlier!r} first",
                )


# -- [astqueue] --------------------------------------------------------------------------


def _astqueue(section: Optional[IniSection], context: _Context) -> AstQueueSettings:
    if section is None:
        context.warn(None, None, "no [astqueue] section: call files use the defaults"
                     " (the PHP service failed every webhook without it)")
        return AstQueueSettings()
    settings = _read_section(section, context)
    astqueue = AstQueueSettings(**_values_for(settings, "", AstQueueSettings))
    if os.path.normpath(astqueue.stagingdir) == os.path.normpath(astqueue.outgoingdir):
        where = (settings.get("stagingdir") or settings["outgoingdir"]).plain
        raise context.error(
            where.line, where.label,
            "stagingdir and outgoingdir are the same: Asterisk would read call files half written",
        )
    return astqueue


# -- [daemon] ----------------------------------------------------------------------------


def _daemon(
    section: Optional[IniSection], environ: Mapping[str, str], context: _Context
) -> DaemonSettings:
    settings = _read_section(section, context) if section is not None else {}
    values: Dict[str, Any] = {}
    for name, setting in settings.items():
        if name in _LISTENER_KEYS:
            # Several listeners via key[] or key[name]; "" and none add none.
            values[name] = tuple(read.value for read in setting.reads() if read.value is not None)
        else:
            values[name] = setting.plain.value
    port = environ.get("WEBSMSD_PORT")
    if "webhook_listen" not in values:
        values["webhook_listen"] = _webhook_from_port(port, context)
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


# ---------------------------------------------------------------------------------------
# Entry points.


def loads(
    text: str, path: str = "<string>", environ: Optional[Mapping[str, str]] = None
) -> Settings:
    """Settings from websms.conf text, or ConfigError naming file, line and key."""
    environ = os.environ if environ is None else environ
    ini = parse_ini(text, path, environ)
    context = _Context(path, list(ini.warnings))
    for section in ini.sections.values():
        if section.name not in _SECTION_KEYS:
            raise context.error(
                section.line, None,
                f"unknown section [{section.name}];"
                " websms.conf has [websms], [websmsd], [astqueue] and [daemon]",
            )
    sections = ini.sections
    outbound = _outbound(sections.get("websms"), context)
    lines = _InboundLines()
    inbound = _inbound(sections.get("websmsd"), context, lines)
    astqueue = _astqueue(sections.get("astqueue"), context)
    daemon = _daemon(sections.get("daemon"), environ, context)
    _warn_behind_a_proxy(inbound, daemon, lines, context)
    if not path.startswith("<"):
        base = os.path.dirname(os.path.abspath(path))
        outbound, astqueue, daemon = _relative_to(base, outbound, astqueue, daemon)
    return Settings(
        path=path, outbound=outbound, inbound=inbound, astqueue=astqueue, daemon=daemon,
        warnings=tuple(context.warnings),
    )


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
        lines += _fields(interface, skip=("name",), preset=_preset_values("websms", interface))

    inbound = settings.inbound
    for interface in inbound.interfaces:
        lines += ["", f"[websmsd] {_interface_title(interface.name)}"]
        lines += _webhook_lines(settings, interface)
        lines += _fields(interface, skip=("name",), preset=_preset_values("websmsd", interface))
    if inbound.interfaces != (inbound.default,):
        lines += ["", "[websmsd] default interface (when remt_addr and url_path choose none)"]
        lines += _fields(inbound.default, skip=("name",),
                         preset=_preset_values("websmsd", inbound.default))
    lines += ["", "[websmsd] selection"] + [f"    {rule}" for rule in _selection_rules(inbound)]
    lines += _fields(inbound, only=("prox_addr", "prox_header"))

    lines += ["", "[astqueue]"] + _fields(settings.astqueue)
    lines += ["", "[daemon]"] + _fields(settings.daemon)

    lines += ["", "warnings:" if settings.warnings else "warnings: none"]
    lines += [f"    {warning}" for warning in settings.warnings]
    return "\n".join(lines) + "\n"


def _interface_title(name: str) -> str:
    return f"interface {name!r}" if name else "interface '' (the only one)"


def _fields(obj: Any, skip: Sequence[str] = (), only: Optional[Sequence[str]] = None,
            preset: Optional[Tuple[str, Mapping[str, Any]]] = None) -> List[str]:
    """`name = value` for each field, marked when it is the preset's or the default.

    `preset` is (name, the values that preset gives this object)."""
    out = []
    for spec in dataclasses.fields(obj):
        if spec.name in skip or (only is not None and spec.name not in only):
            continue
        value = getattr(obj, spec.name)
        default = spec.default if spec.default is not dataclasses.MISSING else None
        if preset is not None and spec.name in preset[1] and preset[1][spec.name] == value:
            mark = f"  (preset {preset[0]})"
        elif value is not None and value == default:
            mark = "  (default)"
        else:
            mark = ""
        out.append(f"    {spec.name} = {_show(spec.name, value)}{mark}")
    return out


def _preset_values(section: str, interface: Any) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(name, typed values) of the preset an interface names, read as `loads` read them."""
    preset = presets.PRESETS.get(interface.preset or "")
    if preset is None:
        return None
    keys = _SECTION_KEYS[section]
    values = {}
    for name, text in preset.section(section).items():
        try:
            values[name] = keys[name].read(presets.fill(text, getattr(interface, "auth_user", None)),
                                           lambda message: None)
        except ValueError:  # pragma: no cover - loads refused such a file already
            continue
    return preset.name, values


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
