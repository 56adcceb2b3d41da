"""PHP's http_build_query and ksort, exactly: the outbound form body websms.php sent.

websms.php built its request with ``http_build_query(ksort($data))``; a provider that
checks a signature over that body (Zadarma) or a picky one needs the same bytes.
Outputs were checked against a real PHP 8.2.  Pure Python.
"""

from __future__ import annotations

import math
import re
from functools import cmp_to_key
from typing import Any, Iterable, List, Mapping, Optional, Tuple, Union


# --------------------------------------------------------------------------------------
# PHP's http_build_query and ksort
# --------------------------------------------------------------------------------------

# PHP urlencode() (what http_build_query uses with the default PHP_QUERY_RFC1738) leaves
# only these bytes alone; a space becomes "+", every other byte %XX in upper case.  Note
# that "~" is NOT among them (Python's quote_plus leaves it alone; PHP does not).
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


_BYTE_CODES = tuple(
    chr(b) if b in _UNRESERVED else "+" if b == 0x20 else "%%%02X" % b for b in range(256)
)


Pairs = Iterable[Tuple[Any, Any]]


def has_surrogates(text: str) -> bool:
    """Whether `text` holds surrogates (bytes smuggled in by surrogateescape)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def to_bytes(value: Union[str, bytes]) -> bytes:
    """A PHP string is bytes: UTF-8, and raw bytes smuggled in by surrogateescape."""
    if isinstance(value, bytes):
        return value
    if not has_surrogates(value):
        return value.encode("utf-8")
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return value.encode("utf-8", "replace")


def urlencode(value: Union[str, bytes]) -> str:
    return "".join([_BYTE_CODES[b] for b in to_bytes(value)])


def _scalar_text(value: Any) -> Optional[Union[str, bytes]]:
    """How http_build_query writes a scalar; None (PHP null) writes nothing at all."""
    if value is None:
        return None
    if value is True:
        return "1"
    if value is False:
        return "0"
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, int):
        return str(value)
    raise TypeError(f"http_build_query: cannot encode a {type(value).__name__}")


def _items(data: Union[Mapping[Any, Any], Pairs]) -> List[Tuple[Any, Any]]:
    if isinstance(data, Mapping):
        return list(data.items())
    return list(data)


def _build(prefix: Optional[str], data: Any, out: List[str]) -> None:
    if prefix is not None and isinstance(data, (list, tuple)):
        items: List[Tuple[Any, Any]] = list(enumerate(data))
    else:
        items = _items(data)  # type: ignore[arg-type]
    for key, value in items:
        name = urlencode(str(key) if isinstance(key, int) else key)
        if prefix is not None:
            name = f"{prefix}%5B{name}%5D"
        if isinstance(value, (Mapping, list)):
            _build(name, value, out)
            continue
        text = _scalar_text(value)
        if text is not None:
            out.append(f"{name}={urlencode(text)}")


def http_build_query(pairs: Union[Mapping[Any, Any], Pairs]) -> str:
    """PHP's ``http_build_query($data)`` with its defaults, byte for byte.

    `pairs` is a mapping or an iterable of (key, value) pairs, written in the order given
    (sort first with `php_ksort` to get what websms.php sent).  Keys and values are
    UTF-8 encoded and percent-encoded as PHP's ``urlencode()``: ``A-Z a-z 0-9 - _ .``
    unchanged, space as ``+``, every other byte ``%XX`` in upper case (``~`` is
    ``%7E``); pairs are joined with ``&``.  Like PHP: a None value is left out, True and
    False are ``1`` and ``0``, and a nested mapping or list becomes ``key[sub]=value``
    (brackets encoded, list positions as sub-keys), ready for nested key paths.
    """
    out: List[str] = []
    _build(None, pairs, out)
    return "&".join(out)


_PHP_INT_MIN = -(2**63)


_PHP_INT_MAX = 2**63 - 1


_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")


_WS = " \t\n\r\v\f"


_NUMERIC = re.compile(
    r"[ \t\n\r\v\f]*([+-]?(?:[0-9]+(\.[0-9]*)?|(\.)[0-9]+)([eE][+-]?[0-9]+)?)[ \t\n\r\v\f]*"
)


def _array_key(key: str) -> Union[int, str]:
    """What a PHP array does with a string key: "12" becomes the integer 12.

    Only canonical decimal integers within PHP_INT_MIN..PHP_INT_MAX are converted:
    "012", "-0", "+1", " 1", "1.0" and "9223372036854775808" stay strings.
    """
    if _CANONICAL_INT.fullmatch(key):
        number = int(key)
        if _PHP_INT_MIN <= number <= _PHP_INT_MAX:
            return number
    return key


def _numeric(text: str) -> Optional[Tuple[Union[int, float], int]]:
    """PHP 8's is_numeric_string(): (number, overflow) for a numeric string, else None.

    Leading and (since PHP 8) trailing whitespace is allowed, hex and "inf" are not.  An
    integer-looking string beyond PHP_INT becomes a float with overflow -1 or 1, as in
    PHP; overflow is 0 otherwise.
    """
    match = _NUMERIC.fullmatch(text)
    if match is None:
        return None
    number, fraction, dot, exponent = match.groups()
    if fraction is None and dot is None and exponent is None:
        value = int(number)
        if _PHP_INT_MIN <= value <= _PHP_INT_MAX:
            return value, 0
        return float(number), (1 if value > 0 else -1)
    return float(number), 0


def _three_way(a: Any, b: Any) -> int:
    return (a > b) - (a < b)


def _compare_strings(a: str, b: str) -> int:
    """zendi_smart_strcmp(): numerically if both are numeric strings, else byte order."""
    na, nb = _numeric(a), _numeric(b)
    if na is not None and nb is not None:
        (va, oa), (vb, ob) = na, nb
        # Integers overflowed to the same side cannot be told apart as numbers; PHP
        # compares their text instead (and so for two equal infinities below).
        if not (oa and oa == ob and float(va) == float(vb)):
            if isinstance(va, float) or isinstance(vb, float):
                if not isinstance(va, float):
                    if ob:
                        return -ob
                    return _three_way(float(va), vb)
                if not isinstance(vb, float):
                    if oa:
                        return oa
                    return _three_way(va, float(vb))
                if not (va == vb and math.isinf(va)):
                    return _three_way(va, vb)
            else:
                return _three_way(va, vb)
    return _three_way(to_bytes(a), to_bytes(b))


def _compare_int_string(number: int, text: str) -> int:
    """PHP 8's comparison of an integer with a string (compare_longs_to_string)."""
    parsed = _numeric(text)
    if parsed is not None:
        value = parsed[0]
        if isinstance(value, int):
            return _three_way(number, value)
        return _three_way(float(number), value)
    return _three_way(str(number).encode("ascii"), to_bytes(text))


def _compare_keys(a: Union[int, str], b: Union[int, str]) -> int:
    if isinstance(a, int) and isinstance(b, int):
        return _three_way(a, b)
    if isinstance(a, str) and isinstance(b, str):
        return _compare_strings(a, b)
    if isinstance(a, int):
        return _compare_int_string(a, b)  # type: ignore[arg-type]
    return -_compare_int_string(b, a)  # type: ignore[arg-type]


def php_ksort(data: Union[Mapping[str, Any], Pairs]) -> List[Tuple[str, Any]]:
    """The (key, value) pairs of `data` in the order PHP 8.2+ ``ksort($data)`` leaves them.

    Keys that PHP stores as integers (canonical decimal integers such as "7" or "-12")
    compare numerically with each other; two other keys compare as PHP 8 compares
    strings: numerically when both are numeric strings ("01", "1.5", " 2"), else byte by
    byte (upper case before lower case, "_" between them, UTF-8 after ASCII); an integer
    key and a string key compare numerically when the string is numeric, else as the
    integer's decimal text against the string, byte by byte.  Keys that compare equal
    keep their order (PHP 8's sort is stable).  Keys keep their original text.

    For ordinary key names (letters, "_", "-") this is plain byte order.  One caveat:
    with digit-only keys mixed with keys that merely start with digits ("9", "10",
    "1a": 9 < 10 < "1a" < 9) PHP's comparison is not an order at all, and PHP's result
    then depends on its sort algorithm and the input order; this function returns a
    deterministic order that may differ from PHP's in exactly those cases.
    """
    items = _items(data)
    decorated = [(_array_key(k) if isinstance(k, str) else k, k, v) for k, v in items]
    decorated.sort(key=cmp_to_key(lambda x, y: _compare_keys(x[0], y[0])))
    return [(k, v) for _, k, v in decorated]
