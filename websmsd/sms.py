"""SMS text encodings, segment counting, UDH concatenation and reassembly.

Pure: no I/O, no clocks read, nothing from Twisted. Used by the SMPP layer and by any
channel that has to count or join SMS parts.

Encodings, named as websmsd's settings name them:

- ``gsm``: the GSM 03.38 default alphabet with its extension table (escape 0x1B), one
  octet per septet, as SMPP data_coding 0 carries it (SMPP never packs septets);
- ``ucs2``: UTF-16BE, characters outside the BMP (emoji) as surrogate pairs
  (data_coding 8);
- ``ia5``: IA5 / ASCII (data_coding 1);
- ``latin1``: ISO-8859-1 (data_coding 3).

Every failure is an :class:`SMSError` (a ``ValueError``). Decoding never fails: bytes
that do not fit the announced coding are read as best they can be and a note says so.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Hashable, List, NamedTuple, Optional, Tuple

__all__ = [
    "SMSError", "ENCODINGS", "DATA_CODING", "gsm_encode", "gsm_decode", "gsm_encodable",
    "encode", "decode", "decode_detail", "Decoded", "Segments", "segments", "split",
    "Concat", "UDH", "build_udh", "parse_udh", "Assembled", "Reassembler",
]


class SMSError(ValueError):
    """Text that cannot be encoded as asked, or a malformed user data header."""


# -- GSM 03.38 ---------------------------------------------------------------------------

# The default alphabet, indexed by septet. 0x1B is the escape to the extension table.
_GSM_BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(_GSM_BASIC) == 128

_ESC = 0x1B
_GSM_EXT = {
    0x0A: "\x0c",  # page break
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}

_GSM_ENCODE: Dict[str, bytes] = {}
for _code, _char in enumerate(_GSM_BASIC):
    if _code != _ESC:
        _GSM_ENCODE[_char] = bytes((_code,))
for _code, _char in _GSM_EXT.items():
    _GSM_ENCODE[_char] = bytes((_ESC, _code))
del _code, _char


def gsm_encodable(text: str) -> bool:
    """True when every character of ``text`` is in the GSM 03.38 alphabet or its
    extension table."""
    enc = _GSM_ENCODE
    return all(c in enc for c in text)


def gsm_encode(text: str) -> bytes:
    """GSM 03.38, one octet per septet, extension characters as 0x1B + code."""
    enc = _GSM_ENCODE
    try:
        return b"".join([enc[c] for c in text])
    except KeyError as e:
        raise SMSError(f"not in the GSM 03.38 alphabet: {e.args[0]!r}") from None


def gsm_decode(data: bytes) -> str:
    """Read one octet per septet. Never raises: octets above 0x7F are read as
    Latin-1 (they are no septets; :func:`decode_detail` handles such payloads)."""
    out = []
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        i += 1
        if b == _ESC:
            if i >= n:
                break  # a lone escape at the end stands for nothing
            x = data[i]
            i += 1
            if x in _GSM_EXT:
                out.append(_GSM_EXT[x])
            elif x == _ESC:
                # 23.038: reserved for a further extension table; shown as a space.
                out.append(" ")
            elif x < 0x80:
                # 23.038: a code missing from the extension table is shown as the
                # default alphabet's character.
                out.append(_GSM_BASIC[x])
            else:
                out.append(chr(x))
        elif b < 0x80:
            out.append(_GSM_BASIC[b])
        else:
            out.append(chr(b))
    return "".join(out)


def _gsm_units(c: str) -> int:
    return 2 if len(_GSM_ENCODE.get(c, b"")) == 2 else 1


def _ucs2_units(c: str) -> int:
    return 2 if ord(c) > 0xFFFF else 1


def _one_unit(c: str) -> int:
    return 1


# -- encodings ---------------------------------------------------------------------------

ENCODINGS = ("gsm", "ucs2", "ia5", "latin1")
DATA_CODING = {"gsm": 0, "ia5": 1, "latin1": 3, "ucs2": 8}

# (single-part limit, multi-part limit with an 8-bit reference, with a 16-bit one), in
# the encoding's units. A UDH with an 8-bit ref takes 6 of the 140 octets, a 16-bit ref 7:
# 134 octets = 153 septets, 133 octets = 152 septets (the fill bits round down).
_LIMITS = {
    "gsm": (160, 153, 152),
    "ia5": (160, 153, 152),  # the SMSC sends IA5 as 7-bit GSM
    "latin1": (140, 134, 133),
    "ucs2": (70, 67, 66),
}
_UNITS = {"gsm": _gsm_units, "ia5": _one_unit, "latin1": _one_unit, "ucs2": _ucs2_units}


def _check_encoding(encoding: str) -> str:
    if encoding not in _LIMITS:
        raise SMSError(f"unknown SMS encoding {encoding!r} (one of {', '.join(ENCODINGS)})")
    return encoding


def _choose(text: str, encoding: Optional[str]) -> str:
    if encoding is None:
        return "gsm" if gsm_encodable(text) else "ucs2"
    return _check_encoding(encoding)


def encode(text: str, encoding: str) -> Tuple[int, bytes]:
    """``(data_coding, payload)`` for ``text`` in ``encoding``; SMSError when it does
    not fit."""
    _check_encoding(encoding)
    if encoding == "gsm":
        return 0, gsm_encode(text)
    codec = {"ucs2": "utf-16-be", "ia5": "ascii", "latin1": "latin-1"}[encoding]
    try:
        # utf-16-be refuses lone surrogates (a str can hold them): they are no text.
        return DATA_CODING[encoding], text.encode(codec)
    except UnicodeEncodeError as e:
        bad = e.object[e.start:e.end]
        raise SMSError(f"not encodable as {encoding}: {bad!r}") from None


class Decoded(NamedTuple):
    """What :func:`decode_detail` read: the text, the codec used, and a note when the
    payload was not what its data_coding said (None when it was)."""

    text: str
    codec: str
    note: Optional[str]


def _fallback(payload: bytes, why: str) -> Decoded:
    try:
        return Decoded(payload.decode("utf-8"), "utf-8", f"{why}: read as UTF-8")
    except UnicodeDecodeError:
        return Decoded(payload.decode("latin-1"), "latin-1", f"{why}: read as Latin-1")


def _ucs2(payload: bytes) -> Decoded:
    note = None
    if len(payload) % 2:
        payload = payload[:-1]
        note = "UCS-2 payload of odd length: last octet dropped"
    try:
        text = payload.decode("utf-16-be")
    except UnicodeDecodeError:
        text = payload.decode("utf-16-be", errors="replace")
        note = note or "UCS-2 payload with an unpaired surrogate: replaced by U+FFFD"
    if text.startswith("\ufeff"):
        text = text[1:]
    return Decoded(text, "ucs2", note)


def _codec(payload: bytes, codec: str, name: str) -> Decoded:
    try:
        return Decoded(payload.decode(codec), name, None)
    except UnicodeDecodeError:
        return Decoded(payload.decode(codec, errors="replace"), name,
                       f"invalid {name} octets replaced by U+FFFD")


def _jis(payload: bytes, prefix: bytes, name: str) -> Decoded:
    # JIS X 0208 / 0212 arrive as bare two-octet codes; EUC-JP is the same codes with the
    # high bits set (0212 behind an SS3 prefix), which Python can read.
    if len(payload) % 2:
        return _fallback(payload, f"{name} payload of odd length")
    euc = b"".join(prefix + bytes((payload[i] | 0x80, payload[i + 1] | 0x80))
                   for i in range(0, len(payload), 2))
    return _codec(euc, "euc_jp", name)


def _gsm7(payload: bytes) -> Decoded:
    if any(b > 0x7F for b in payload):
        return _fallback(payload, "GSM 03.38 payload with octets above 0x7F")
    return Decoded(gsm_decode(payload), "gsm", None)


def decode_detail(data_coding: int, payload: bytes, *, dc0: str = "gsm") -> Decoded:
    """Decode an SMPP short_message / message_payload. Never raises.

    ``dc0`` says what data_coding 0 ("SMSC default alphabet") means for this SMSC:
    ``gsm`` (GSM 03.38, the usual), ``ia5`` or ``latin1``.
    """
    payload = bytes(payload)
    dc = int(data_coding) & 0xFF
    if dc == 0:
        if dc0 == "gsm":
            return _gsm7(payload)
        return decode_detail(DATA_CODING[_check_encoding(dc0)], payload)
    if dc == 1:
        if any(b > 0x7F for b in payload):
            return _fallback(payload, "IA5 payload with octets above 0x7F")
        return Decoded(payload.decode("ascii"), "ia5", None)
    if dc == 3:
        return Decoded(payload.decode("latin-1"), "latin1", None)
    if dc == 8:
        return _ucs2(payload)
    if dc == 6:
        return _codec(payload, "iso8859_5", "iso-8859-5")
    if dc == 7:
        return _codec(payload, "iso8859_8", "iso-8859-8")
    if dc == 5:
        return _jis(payload, b"", "jis-x-0208")
    if dc == 13:
        return _jis(payload, b"\x8f", "jis-x-0212")
    if dc == 10:
        return _codec(payload, "iso2022_jp", "iso-2022-jp")
    if dc == 14:
        return _codec(payload, "euc_kr", "ks-c-5601")
    if dc in (2, 4):
        return _fallback(payload, f"data_coding {dc} is binary")
    # 3GPP 23.038 coding groups (SMPP leaves 0x10-0xFF to them).
    alphabet = None
    if dc & 0xC0 in (0x00, 0x40) and dc >= 0x10:
        if dc & 0x20:
            return _fallback(payload, f"data_coding 0x{dc:02X} is compressed")
        alphabet = (dc >> 2) & 0x03
    elif dc & 0xF0 in (0xC0, 0xD0):
        alphabet = 0
    elif dc & 0xF0 == 0xE0:
        alphabet = 2
    elif dc & 0xF0 == 0xF0:
        alphabet = 1 if dc & 0x04 else 0
    if alphabet == 0:
        return _gsm7(payload)
    if alphabet == 2:
        return _ucs2(payload)
    if alphabet == 1:
        return _fallback(payload, f"data_coding 0x{dc:02X} is 8-bit data")
    return _fallback(payload, f"data_coding 0x{dc:02X} is unknown")


def decode(data_coding: int, payload: bytes, *, dc0: str = "gsm") -> str:
    """The text of an SMPP payload (see :func:`decode_detail`). Never raises."""
    return decode_detail(data_coding, payload, dc0=dc0).text


# -- segments ----------------------------------------------------------------------------


class Segments(NamedTuple):
    """How ``text`` travels as SMS: ``parts`` SMS in ``encoding`` (``data_coding``),
    ``units`` in all (septets, UCS-2 code units or octets), ``per_part`` units per part
    (the single-part limit when ``parts`` is 1), ``remaining`` units free in the last
    part."""

    encoding: str
    data_coding: int
    parts: int
    units: int
    per_part: int
    remaining: int


def _unit_list(text: str, encoding: str) -> List[int]:
    encode(text, encoding)  # refuses what the encoding cannot carry
    unit = _UNITS[encoding]
    return [unit(c) for c in text]


def _cut(text: str, units: List[int], limit: int) -> List[str]:
    """Parts of at most ``limit`` units; a character (an escape pair or a surrogate
    pair) is never split."""
    parts, start, used = [], 0, 0
    for i, u in enumerate(units):
        if used + u > limit:
            parts.append(text[start:i])
            start, used = i, 0
        used += u
    parts.append(text[start:])
    return parts


def _layout(text: str, encoding: Optional[str], udh16: bool):
    enc = _choose(text, encoding)
    units = _unit_list(text, enc)
    single, multi8, multi16 = _LIMITS[enc]
    total = sum(units)
    if total <= single:
        return enc, units, total, single, [text]
    limit = multi16 if udh16 else multi8
    return enc, units, total, limit, _cut(text, units, limit)


def segments(text: str, encoding: Optional[str] = None, *, udh16: bool = False) -> Segments:
    """Count the SMS parts ``text`` needs. ``encoding`` None picks ``gsm`` when every
    character fits, else ``ucs2``. Extension characters count 2 septets; an emoji 2
    UCS-2 units. ``udh16`` counts parts with a 16-bit concatenation reference.
    SMSError when ``encoding`` cannot carry the text."""
    enc, units, total, limit, parts = _layout(text, encoding, udh16)
    last = sum(_UNITS[enc](c) for c in parts[-1])
    return Segments(enc, DATA_CODING[enc], len(parts), total, limit, limit - last)


def split(text: str, encoding: Optional[str] = None, *, udh16: bool = False) -> List[str]:
    """The texts of the parts, cut as :func:`segments` counts them (``[text]`` when it
    fits one SMS)."""
    return _layout(text, encoding, udh16)[4]


# -- user data header --------------------------------------------------------------------


class Concat(NamedTuple):
    """Concatenation information of one part: reference, total parts, this part's
    number (1-based), and where it came from (8 or 16 for a UDH reference of that many
    bits, ``'sar'`` for SMPP sar_ TLVs)."""

    ref: int
    total: int
    seq: int
    kind: object = 8


class UDH(NamedTuple):
    """A parsed user data header: every information element as ``(iei, data)``, and the
    concatenation element when there is a usable one."""

    elements: Tuple[Tuple[int, bytes], ...]
    concat: Optional[Concat]


def build_udh(ref: int, total: int, seq: int, *, ref16: bool = False) -> bytes:
    """A UDH holding one concatenation element (IEI 0x00, or 0x08 with ``ref16``),
    length octet included."""
    if not 1 <= total <= 255 or not 1 <= seq <= total:
        raise SMSError(f"bad concatenation numbers: part {seq} of {total}")
    if ref16:
        if not 0 <= ref <= 0xFFFF:
            raise SMSError(f"16-bit concatenation reference out of range: {ref}")
        return bytes((6, 0x08, 4, ref >> 8, ref & 0xFF, total, seq))
    if not 0 <= ref <= 0xFF:
        raise SMSError(f"8-bit concatenation reference out of range: {ref}")
    return bytes((5, 0x00, 3, ref, total, seq))


def parse_udh(payload: bytes) -> Tuple[UDH, bytes]:
    """Split a payload that starts with a UDH (esm_class 0x40) into the header and the
    rest. SMSError when the header does not fit the payload. A concatenation element
    with impossible numbers (total 0, part 0 or past the total) gives ``concat`` None."""
    payload = bytes(payload)
    if not payload:
        raise SMSError("UDH indicated but the payload is empty")
    udhl = payload[0]
    if udhl + 1 > len(payload):
        raise SMSError(f"UDH length {udhl} exceeds the payload ({len(payload) - 1} octets)")
    header, rest = payload[1:udhl + 1], payload[udhl + 1:]
    elements = []
    concat = None
    i = 0
    while i < len(header):
        if i + 2 > len(header):
            raise SMSError("UDH information element cut short")
        iei, length = header[i], header[i + 1]
        data = header[i + 2:i + 2 + length]
        if len(data) != length:
            raise SMSError(f"UDH information element 0x{iei:02X} longer than the header")
        elements.append((iei, data))
        i += 2 + length
        found = None
        if iei == 0x00 and length == 3:
            found = Concat(data[0], data[1], data[2], 8)
        elif iei == 0x08 and length == 4:
            found = Concat((data[0] << 8) | data[1], data[2], data[3], 16)
        if found is not None and concat is None and 1 <= found.seq <= found.total:
            concat = found
    return UDH(tuple(elements), concat), rest


# -- reassembly --------------------------------------------------------------------------


class Assembled(NamedTuple):
    """A multi-part text that is finished: ``complete`` when every part came; otherwise
    the parts that came, in order, with ``marker`` where parts are missing (``missing``
    lists their numbers). ``first_seen`` / ``last_seen`` are the clock values passed in.
    ``parts`` maps part number to its text, for callers that join differently."""

    key: Hashable
    text: str
    complete: bool
    total: int
    missing: Tuple[int, ...]
    parts: Dict[int, str]
    first_seen: float
    last_seen: float


class _Group:
    __slots__ = ("key", "total", "parts", "first_seen", "last_seen")

    def __init__(self, key, total, now):
        self.key, self.total = key, total
        self.parts: Dict[int, str] = {}
        self.first_seen = self.last_seen = now


class Reassembler:
    """Joins multi-part inbound texts. Pure: the caller passes the clock.

    ``add(key, total, seq, text, now)`` files one part; ``key`` names the message (e.g.
    ``(source, destination, ref)``); a group is the key and its total, so a part that
    disagrees on the total starts another group. It returns the groups that finished
    with this call: the completed one, and any pending group pushed out because more
    than ``max_groups`` were pending (oldest first seen goes first, as incomplete).
    A part number already held is a duplicate and ignored (``duplicates`` counts them);
    so is a part of a group completed within the last ``timeout`` seconds (an SMSC
    repeating a part whose answer it missed must not start a half message).
    ``expire(now)`` returns, as incomplete, the groups that got no part for ``timeout``
    seconds. ``next_deadline()`` is when the next one would expire (None when nothing is
    pending), for the caller's timer.
    """

    def __init__(self, *, timeout: float = 600.0, max_groups: int = 256,
                 marker: str = "[…]"):
        if timeout <= 0 or max_groups < 1:
            raise ValueError("Reassembler needs timeout > 0 and max_groups >= 1")
        self.timeout = float(timeout)
        self.max_groups = int(max_groups)
        self.marker = marker
        self.duplicates = 0
        self._groups: "OrderedDict[Tuple[Hashable, int], _Group]" = OrderedDict()
        # groups completed lately: (key, total) -> completion time
        self._done: "OrderedDict[Tuple[Hashable, int], float]" = OrderedDict()

    def __len__(self) -> int:
        return len(self._groups)

    def add(self, key: Hashable, total: int, seq: int, text: str,
            now: float) -> List[Assembled]:
        if not isinstance(total, int) or not isinstance(seq, int) or total < 1 or not (
                1 <= seq <= total):
            raise SMSError(f"bad concatenation numbers: part {seq} of {total}")
        gkey = (key, total)
        self._forget_done(now)
        if gkey in self._done:
            self.duplicates += 1
            return []
        finished: List[Assembled] = []
        group = self._groups.get(gkey)
        if group is None:
            while len(self._groups) >= self.max_groups:
                _, oldest = self._groups.popitem(last=False)
                finished.append(self._finish(oldest))
            group = self._groups[gkey] = _Group(key, total, now)
        if seq in group.parts:
            self.duplicates += 1
            return finished
        group.parts[seq] = text
        group.last_seen = max(group.last_seen, now)
        if len(group.parts) == total:
            del self._groups[gkey]
            self._done[gkey] = now
            while len(self._done) > self.max_groups:
                self._done.popitem(last=False)
            finished.append(self._finish(group))
        return finished

    def expire(self, now: float) -> List[Assembled]:
        self._forget_done(now)
        stale = [k for k, g in self._groups.items() if now - g.last_seen >= self.timeout]
        return [self._finish(self._groups.pop(k)) for k in stale]

    def next_deadline(self) -> Optional[float]:
        if not self._groups:
            return None
        return min(g.last_seen for g in self._groups.values()) + self.timeout

    def flush(self) -> List[Assembled]:
        """Every pending group, as it stands (e.g. at shutdown)."""
        out = [self._finish(g) for g in self._groups.values()]
        self._groups.clear()
        return out

    def _forget_done(self, now: float) -> None:
        while self._done:
            gkey, when = next(iter(self._done.items()))
            if now - when < self.timeout:
                break
            del self._done[gkey]

    def _finish(self, group: _Group) -> Assembled:
        missing = tuple(n for n in range(1, group.total + 1) if n not in group.parts)
        pieces: List[str] = []
        gap = False
        for n in range(1, group.total + 1):
            if n in group.parts:
                pieces.append(group.parts[n])
                gap = False
            elif not gap:
                pieces.append(self.marker)
                gap = True
        return Assembled(group.key, "".join(pieces), not missing, group.total, missing,
                         dict(group.parts), group.first_seen, group.last_seen)

