"""Text as it may appear in a log line, an error reply or a status page: one line, short.

Values from peers (numbers, ids, paths, answers) are shown escaped, so that a line break
or a control character in them can neither forge a log line nor break an answer.  Pure
Python.
"""

from __future__ import annotations


def shorten(text: str, limit: int = 200) -> str:
    """`text` cut to `limit` characters, with "..." when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: object, limit: int = 40) -> str:
    """A value quoted and escaped (its repr), cut to `limit`: for a value that may be
    anything, e.g. the refused To of a request."""
    return shorten(repr(value), limit)


def one_line(text: str, limit: int = 200) -> str:
    """`text` with every non-printable character (line breaks too) as a space, stripped
    and cut: for a peer's free text (a provider's error, a report's detail)."""
    return shorten("".join(c if c.isprintable() else " " for c in text).strip(), limit)


def escape_controls(text: str) -> str:
    """`text` with control characters (and line/paragraph separators, BOM) written as
    escapes (\\n, \\x1b, \\u2028), everything else kept: an excerpt stays readable."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append("\\x%02x" % code)
        elif code in (0x2028, 0x2029, 0xFEFF):
            out.append("\\u%04x" % code)
        else:
            out.append(ch)
    return "".join(out)


def local_time(t: float) -> str:
    """`t` as the status page and the channels' details show it: date, time and zone,
    "UTC" or the offset ("+0100"), which unlike a name ("CET", "IST") cannot be read two
    ways."""
    import time

    lt = time.localtime(t)
    zone = "UTC" if not lt.tm_gmtoff else time.strftime("%z", lt)
    return time.strftime("%Y-%m-%d %H:%M:%S ", lt) + zone
