"""Cutting a long text into parts that each fit a limit, in order, cleanly.

Asterisk takes a text in pieces of limited size: a call-file line holds 1,000 bytes of
encoded body, an AMI `MessageSend` 756 bytes of UTF-8.  A longer text goes in several
parts, each marked `(i/n) ` so that the reader sees the order.  A cut never falls inside
a character, nor between a character and what belongs to it (combining marks, ZWJ
sequences, variation selectors, skin tones, flag halves): a part never shows a broken
emoji or a lone accent.  Removing the markers and joining the parts gives back the text.

Pure Python; the cost of a piece of text (its bytes once encoded for the carrier) is the
caller's function.
"""

from __future__ import annotations

import unicodedata
from typing import Callable, List

__all__ = ["clusters", "pack", "split_marked", "utf8_cost"]

Cost = Callable[[str], int]

_ZWJ = "\u200d"


def utf8_cost(piece: str) -> int:
    """Bytes of `piece` in UTF-8 (a lone surrogate counts 3, as its escape would)."""
    return len(piece.encode("utf-8", "surrogatepass"))


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc"


def _is_extend(ch: str) -> bool:
    """Does `ch` belong to the character before it (never to be separated from it)?"""
    cp = ord(ch)
    return (
        unicodedata.category(ch) in ("Mn", "Me", "Mc")  # combining marks, keycap U+20E3
        or cp == 0x200D  # ZERO WIDTH JOINER
        or 0xFE00 <= cp <= 0xFE0F  # variation selectors
        or 0xE0100 <= cp <= 0xE01EF  # variation selectors supplement
        or 0x1F3FB <= cp <= 0x1F3FF  # emoji skin tone modifiers
        or 0xE0020 <= cp <= 0xE007F  # tags (subdivision flags)
    )


def _is_regional_indicator(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def clusters(text: str) -> List[str]:
    """Split `text` into user-perceived characters, close to UAX #29 grapheme clusters.

    Kept together: CR LF; a character and the combining marks, ZWJ, variation
    selectors, skin tone modifiers and tags after it; the character after a ZWJ
    (emoji ZWJ sequences); pairs of regional indicators (flags).  Control characters
    stand alone.
    """
    out: List[str] = []
    i, n = 0, len(text)
    while i < n:
        start = i
        ch = text[i]
        i += 1
        if ch == "\r" and i < n and text[i] == "\n":
            i += 1
        elif not _is_control(ch):  # a control character stands alone
            if _is_regional_indicator(ch) and i < n and _is_regional_indicator(text[i]):
                i += 1
            while i < n:
                nxt = text[i]
                if _is_extend(nxt):
                    i += 1
                elif text[i - 1] == _ZWJ and not _is_control(nxt) and not nxt.isspace():
                    i += 1
                else:
                    break
        out.append(text[start:i])
    return out


def pack(units: List[str], costs: List[int], room: int) -> List[str]:
    """Cut the sequence of units into chunks of at most `room`, in order.

    A chunk ends after white space when that keeps it at least half full; otherwise
    it is cut between two units.  The white space stays at the end of its chunk, so
    joining the chunks gives back the text.
    """
    chunks: List[str] = []
    i, n = 0, len(units)
    while i < n:
        total, j = 0, i
        while j < n and total + costs[j] <= room:
            total += costs[j]
            j += 1
        if j == n:
            chunks.append("".join(units[i:]))
            break
        cut = j
        filled = total
        for k in range(j, i, -1):
            if filled * 2 < room:
                break
            if units[k - 1].isspace():
                cut = k
                break
            filled -= costs[k - 1]
        if cut == i:  # a unit bigger than the room (cannot happen: see split_marked)
            cut = i + 1
        chunks.append("".join(units[i:cut]))
        i = cut
    return chunks


def split_marked(text: str, budget: int, cost: Cost = utf8_cost) -> List[str]:
    """The parts to send for `text`, each costing at most `budget`.

    A text that fits is returned unchanged as ``[text]``.  A longer one is cut into n
    parts, each starting with a ``(i/n) `` marker, in order; cuts are made after white
    space where possible, never inside a character, and not inside a grapheme cluster
    (only a single cluster longer than a whole part is cut between its code points).
    Raises ValueError when `budget` cannot even hold a marker and one character.
    """
    if cost(text) <= budget:
        return [text]
    base_units = clusters(text)
    digits = 1
    while True:
        most = 10**digits - 1
        room = budget - cost(f"({most}/{most}) ")
        if room < 4:  # one UTF-8 character at least
            raise ValueError(f"a limit of {budget} leaves no room for text after a marker")
        units: List[str] = []
        for unit in base_units:
            if cost(unit) > room:  # an absurd cluster (hundreds of marks): code points
                units.extend(unit)
            else:
                units.append(unit)
        chunks = pack(units, [cost(u) for u in units], room)
        if len(chunks) <= most:
            break
        digits += 1
    n = len(chunks)
    return [f"({i}/{n}) {chunk}" for i, chunk in enumerate(chunks, 1)]
