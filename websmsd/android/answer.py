"""What the three Android protocols share: the HTTP answer value and careful JSON.

Pure: no Twisted, no I/O.  A twisted.web resource turns an `Answer` into a response with
`request.setResponseCode(a.status)`, `Content-Type: a.content_type`, each of `a.headers`,
and `a.body`.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional, Tuple

from websmsd.record import frozen

JSON_TYPE = "application/json; charset=utf-8"

# Characters that must never reach an identifier, a number or a log line from a peer:
# C0 and C1 controls, DEL, the Unicode line and paragraph separators, and the byte-order
# mark (invisible, and it makes two equal-looking ids differ).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
# A lone surrogate (from a JSON "\ud800" escape) cannot be encoded as UTF-8: it would
# make the store, a call file or a log line fail far from here.
_SURROGATE = re.compile("[\ud800-\udfff]")


@frozen
class Answer:
    """One HTTP answer: status, body bytes, Content-Type and any extra headers."""

    status: int
    body: bytes
    content_type: str
    headers: Tuple[Tuple[str, str], ...] = ()

    def header(self, name: str) -> Optional[str]:
        """The value of an extra header (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


def json_bytes(value: Any) -> bytes:
    """Compact JSON, ASCII only: every app reads \\uXXXX escapes whatever charset it assumes."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")


def json_answer(status: int, value: Any, headers: Tuple[Tuple[str, str], ...] = ()) -> Answer:
    return Answer(status, json_bytes(value), JSON_TYPE, headers)


class JSONError(ValueError):
    """A body that is not the JSON it should be; str() is one line fit for a log."""


def _no_constants(name: str) -> Any:
    raise JSONError(f"{name} is not JSON")


def load_json(body: bytes) -> Any:
    """Decode a JSON body strictly: UTF-8 (an optional BOM), no NaN/Infinity.

    Raises JSONError only, whatever the bytes: deep nesting, huge integers and invalid
    UTF-8 included.
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise JSONError("the body is not bytes")
    try:
        text = bytes(body).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise JSONError("the body is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_no_constants)
    except JSONError:
        raise
    except RecursionError:
        raise JSONError("JSON nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError, and int() of a 5000-digit number
        raise JSONError(f"not JSON ({one_line(str(e), 80)})") from None


def one_line(text: str, limit: int = 200) -> str:
    """`text` made safe for a log line or a JSON error message: no controls, bounded."""
    text = _SURROGATE.sub("\ufffd", _CONTROL.sub(" ", str(text)))
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    return text


def is_clean(value: str, max_len: int, *, allow_empty: bool = False) -> bool:
    """True when `value` is a string fit for an id, a number or a log line."""
    return (
        isinstance(value, str)
        and (allow_empty or value != "")
        and len(value) <= max_len
        and not _CONTROL.search(value)
        and not _SURROGATE.search(value)
    )


def is_text(value: str, max_len: int) -> bool:
    """True for an SMS text: any characters (newlines too) except lone surrogates."""
    return isinstance(value, str) and len(value) <= max_len and not _SURROGATE.search(value)


# Milliseconds since the epoch up to the year 9999: a phone's clock, not a counter.
MAX_EPOCH_MS = 253402300799999


def epoch_ms(value: Any) -> Optional[int]:
    """A JSON number of milliseconds (not a bool, not fractional), or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_EPOCH_MS else None
    if isinstance(value, float) and value.is_integer() and 0 <= value <= MAX_EPOCH_MS:
        return int(value)
    return None
