"""What one SMPP SIM remembers of its inbound SMS, across reconnects and restarts.  Pure.

A deliver_sm carries no id of its own: when the connection drops (or websmsd dies) after
the text was committed but before the SMSC read our deliver_sm_resp, the SMSC sends the
same deliver_sm again on the next bind.  And a long text comes in parts, each
acknowledged on its own (an SMSC that waits for each answer would otherwise never send
the next part), so a part must be kept durably before it is answered.

`InboundLog` holds both, and is saved as one JSON text in the store's channel state, in
the same transaction as the messages it concerns (`snapshot`):

- *recent*: the content key of every deliver_sm committed within `window` seconds, with
  the connection it came on.  The same content again on *another* connection within the
  window is the SMSC's resend and is only acknowledged; on the same connection it is a
  new SMS (the SMSC read our answer there), e.g. "OK" sent twice.
- *parts*: the parts of long texts still waiting for the rest, reassembled with
  `websmsd.sms.Reassembler` (which gives up after `parts_timeout`: what came is delivered,
  marked incomplete).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from typing import Dict, Hashable, List, Mapping, Optional, Tuple

from websmsd import sms
from websmsd.smpp import pdu as P

# Enough for a busy SIM; the oldest go first (they are the least likely to be resent).
MAX_RECENT = 2000
FORMAT = 1


def content_key(pdu: P.PDU) -> str:
    """A digest of what makes a deliver_sm this SMS (or this part of one): its addresses,
    coding, header flag, text octets and sar_ numbers.  The sequence number is not part
    of it: a resend on a new connection has a new one."""
    h = hashlib.sha256()
    for name in ("source_addr", "destination_addr"):
        h.update(str(pdu.get(name) or "").encode("utf-8", "surrogatepass") + b"\x00")
    for name in ("source_addr_ton", "data_coding", "sar_msg_ref_num", "sar_total_segments",
                 "sar_segment_seqnum"):
        h.update(str(pdu.get(name)).encode("ascii") + b"\x00")
    h.update(b"1" if (pdu.get("esm_class") or 0) & P.ESM_UDHI else b"0")
    for name in ("short_message", "message_payload"):
        value = pdu.get(name)
        data = bytes(value) if isinstance(value, (bytes, bytearray)) else b""
        h.update(len(data).to_bytes(4, "big") + data)
    return h.hexdigest()[:32]


class InboundLog:
    """Recent content keys and pending parts of one SIM (see the module docstring)."""

    def __init__(self, *, window: float = 600.0, parts_timeout: float = 600.0,
                 max_groups: int = 256, max_recent: int = MAX_RECENT,
                 marker: str = "[…]"):
        self.window = float(window)
        self.max_recent = int(max_recent)
        self.reassembler = sms.Reassembler(timeout=parts_timeout, max_groups=max_groups,
                                           marker=marker)
        # content key -> (when committed, connection it came on)
        self.recent: "OrderedDict[str, Tuple[float, str]]" = OrderedDict()
        # (reassembly key, total) -> {"first": t, "last": t, "parts": {seq: text}}: what
        # the reassembler holds, in a form that can be saved
        self.parts: Dict[Tuple[Hashable, int], dict] = {}

    # -- resends ------------------------------------------------------------------------

    def is_resend(self, key: str, connection: str, now: float) -> bool:
        """Whether a deliver_sm with content `key` arriving on `connection` is a copy of
        one committed already (on another connection, within the window)."""
        seen = self.recent.get(key)
        if seen is None:
            return False
        when, where = seen
        return self.window > 0 and where != connection and 0 <= now - when <= self.window

    def remember(self, keys: Mapping[str, str], now: float) -> None:
        """`keys` (content key -> connection) were committed at `now`."""
        for key, connection in keys.items():
            self.recent.pop(key, None)
            self.recent[key] = (now, connection)
        self._prune(now)

    def _prune(self, now: float) -> None:
        while self.recent:
            key, (when, _) = next(iter(self.recent.items()))
            if now - when <= self.window and len(self.recent) <= self.max_recent:
                break
            del self.recent[key]

    # -- parts --------------------------------------------------------------------------

    def add_part(self, key: Tuple, total: int, seq: int, text: str,
                 now: float) -> List[sms.Assembled]:
        """File one part; the texts finished by it (complete, or pushed out)."""
        ignored = self.reassembler.duplicates
        finished = self.reassembler.add(key, total, seq, text, now)
        # The reassembler counts a part it already holds, or one of a text it finished
        # lately, as a duplicate: then it filed nothing, and neither does the copy.
        filed = self.reassembler.duplicates == ignored
        done = {(a.key, a.total) for a in finished}
        if filed and (key, total) not in done:
            group = self.parts.setdefault((key, total), {"first": now, "last": now, "parts": {}})
            group["parts"][seq] = text
            group["last"] = max(group["last"], now)
        for gkey in done:
            self.parts.pop(gkey, None)
        return finished

    def expire(self, now: float) -> List[sms.Assembled]:
        finished = self.reassembler.expire(now)
        for a in finished:
            self.parts.pop((a.key, a.total), None)
        return finished

    def next_deadline(self) -> Optional[float]:
        return self.reassembler.next_deadline()

    # -- saving -------------------------------------------------------------------------

    def snapshot(self, keys: Mapping[str, str], now: float) -> str:
        """The JSON to save with a commit of `keys` (content key -> connection) at `now`."""
        recent = [[k, when, where] for k, (when, where) in self.recent.items()
                  if k not in keys and now - when <= self.window]
        recent += [[k, now, where] for k, where in keys.items()]
        recent = recent[-self.max_recent:]
        parts = [{"key": list(key), "total": total, "first": g["first"], "last": g["last"],
                  "parts": {str(seq): text for seq, text in sorted(g["parts"].items())}}
                 for (key, total), g in self.parts.items()]
        return json.dumps({"format": FORMAT, "recent": recent, "parts": parts},
                          ensure_ascii=False, separators=(",", ":"))

    def restore(self, text: Optional[str]) -> List[str]:
        """Load what a snapshot saved; returns complaints (a damaged entry is skipped)."""
        if not text:
            return []
        problems: List[str] = []
        try:
            data = json.loads(text)
        except ValueError as e:
            return [f"saved state is not JSON ({e}); starting afresh"]
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return ["saved state has an unknown format; starting afresh"]
        for entry in data.get("recent") or ():
            try:
                key, when, where = entry
                self.recent[str(key)] = (float(when), str(where))
            except (TypeError, ValueError):
                problems.append("a damaged recent entry was skipped")
        for group in data.get("parts") or ():
            try:
                key = tuple(_hashable(k) for k in group["key"])
                total = int(group["total"])
                last = float(group["last"])
                first = float(group["first"])
                for seq, text in sorted(group["parts"].items(), key=lambda i: int(i[0])):
                    self._restore_part(key, total, int(seq), str(text), first, last)
            except (KeyError, TypeError, ValueError, sms.SMSError, AttributeError):
                problems.append("a damaged pending part was skipped")
        return problems

    def _restore_part(self, key: Tuple, total: int, seq: int, text: str, first: float,
                      last: float) -> None:
        # Filed as of the group's last activity, from which its timeout runs.
        self.add_part(key, total, seq, text, last)
        group = self.parts.get((key, total))
        if group is not None:
            group["first"] = min(group["first"], first)


def _hashable(value: object) -> Hashable:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, (str, int, float)) or value is None:
        return value
    raise TypeError("not a key part")
