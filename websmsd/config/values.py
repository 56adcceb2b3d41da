"""Value readers: one websms.conf value (text) in, a typed value out, or ValueError.

Each reader is ``read(text, note) -> value``; ``note(message)`` records a notice (the
value was read, but not as written).  The names are private to the config package.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from typing import Any, Callable, Optional, Tuple

from websmsd.endpoints import PORT as _PORT
from websmsd.endpoints import is_ip as _is_ip
from websmsd.endpoints import parse_endpoint as _parse_endpoint
from websmsd.itsp import presets
from websmsd.net import Network


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
    # Every bad entry in one message: fixing them one start at a time costs a restart each.
    networks, bad, empty = [], [], False
    for entry in text.split(","):
        entry = entry.strip()
        if not entry:
            empty = True
            continue
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            bad.append(repr(entry))
            continue
        if ipaddress.ip_address(entry.partition("/")[0]) != network.network_address:
            note(f"{entry} has host bits set; read as {network}")
        networks.append(network)
    problems = []
    if len(bad) == 1:
        problems.append(f"{bad[0]} is not an IP address or CIDR")
    elif bad:
        problems.append(f"{', '.join(bad[:-1])} and {bad[-1]} are not IP addresses or CIDRs")
    if empty:
        problems.append("an empty entry in the comma list")
    if problems:
        raise ValueError("; ".join(problems))
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


_TRUE_WORDS = ("1", "yes", "true", "on")
_FALSE_WORDS = ("", "0", "no", "false", "off", "none")


def _boolean(text: str, note: Note) -> bool:
    """yes/no, quoted or not (an unquoted yes reads as "1", no as "" in PHP ini)."""
    word = text.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError(f"{text!r} is not yes or no")


_NUMBER = re.compile(r"\+?[0-9][0-9 ().-]{0,30}")


def _numbers(text: str, note: Note) -> Tuple[str, ...]:
    """An interface's own numbers: a comma list (its DIDs, a SIM's number)."""
    numbers = tuple(n.strip() for n in _single_line(text).split(",") if n.strip())
    for number in numbers:
        if not _NUMBER.fullmatch(number):
            raise ValueError(f"{number!r} is not a phone number")
    return numbers
